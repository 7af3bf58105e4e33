# Types shared by the Master (control plane) and Worker interfaces.
# VmSpec is the contract between Nix, CI, the control plane and the worker:
# its field names match the camelCase JSON that nix/lib writes.
@0xc2a1d35e8f4b7a01;

struct Label {
  key @0 :Text;
  value @1 :Text;
}

struct VmSpec {
  name @0 :Text;                    # unique within a generation; DNS-label shape
  toplevel @1 :Text;                # /nix/store path of the guest system
  kernelPath @2 :Text;              # /nix/store path of the kernel image
  initrdPath @3 :Text;              # /nix/store path of the initrd ("" when none)
  diskImagePath @4 :Text;           # /nix/store path of the root disk image ("" when none)
  cmdline @5 :Text;                 # kernel command line
  cpu @6 :UInt32;                   # vCPUs, > 0
  memoryMb @7 :UInt64;              # guest memory in MiB, > 0
  networkAllowedDomains @8 :List(Text);
  contentHash @9 :Text;             # changes exactly when what boots changes
  labels @10 :List(Label);          # placement constraints and grouping
  project @11 :Text;                # the project it belongs to: "" as Nix writes it,
                                    # set by the control plane on publish
}

enum VmState {
  creating @0;
  running @1;
  paused @2;
  stopping @3;
  failed @4;
  stopped @5;
}

struct VmMetrics {
  cpuPercent @0 :Float64;           # CPU of the CH process over the last interval
  rssBytes @1 :UInt64;              # resident memory of the CH process
  diskReadBytes @2 :UInt64;
  diskWriteBytes @3 :UInt64;
  netRxBytes @4 :UInt64;
  netTxBytes @5 :UInt64;
  egressDroppedPackets @6 :UInt64;  # packets the worker's egress rules dropped (not allowed, or DNS elsewhere)
}

struct VmStatus {
  id @0 :Text;                      # worker-assigned VM id (UUIDv7)
  name @1 :Text;
  contentHash @2 :Text;
  state @3 :VmState;
  pid @4 :UInt32;                   # CH process id, 0 when none
  error @5 :Text;                   # why the VM failed, "" otherwise
  createdAtMs @6 :UInt64;           # unix ms
  cpu @7 :UInt32;
  memoryMb @8 :UInt64;
  project @9 :Text;                 # the VM's project ("" = "default")
}

# What a worker reports it is running (pushData).
struct RunningVm {
  status @0 :VmStatus;
  metrics @1 :VmMetrics;
}

struct Resources {
  cpu @0 :UInt32;
  memoryMb @1 :UInt64;
}

struct WorkerMetrics {
  loadAverage @0 :Float64;
  memoryUsedMb @1 :UInt64;
  vmCount @2 :UInt32;
}

struct WorkerStatus {
  workerId @0 :Text;
  address @1 :Text;
  capacity @2 :Resources;
  allocated @3 :Resources;
  labels @4 :List(Label);
  vmCount @5 :UInt32;
  runDir @6 :Text;
  version @7 :Text;
  uptimeMs @8 :UInt64;
}

# A generation: one Git commit's desired state of one project. Numbers
# and intent hashes are per project.
struct Generation {
  number @0 :UInt64;
  commit @1 :Text;
  intentHash @2 :Text;
  vmCount @3 :UInt32;
  publishedAtMs @4 :UInt64;
  project @5 :Text;
  author @6 :Text;                  # the commit's author name ("" when unknown)
  message @7 :Text;                 # the first line of the commit message
  jobId @8 :UInt64;                 # the CI job that published it (0 when none)
  convergedAtMs @9 :UInt64;         # when every VM first ran it (0 until then)
}

# Result carrying an error as data for calls whose failure is an ordinary
# outcome the client must print (bad spec, unknown VM).
struct Error {
  code @0 :ErrorCode;
  message @1 :Text;                 # one line, names what was wrong
}

enum ErrorCode {
  invalidArgument @0;
  notFound @1;
  alreadyExists @2;
  failedPrecondition @3;
  internal @4;
  unavailable @5;
  permissionDenied @6;
}

struct Result(Ok) {
  union {
    ok @0 :Ok;
    err @1 :Error;
  }
}

struct Empty {}

# What a token lets its holder do (see context/architecture.md, "Trust
# model"): admin everything; ci publish (for every project, or for one
# project only with a `ci:<project>` token) and read; worker register, poll
# and report as its own worker id only; reader read status only.
enum Role {
  admin @0;
  ci @1;
  worker @2;
  reader @3;
}
