# The Worker interface: what a worker host serves over Cap'n Proto (TCP,
# default 127.0.0.1:6000) and hands to the control plane when it registers.
@0xd4f0c8a2b61e9c02;

using Common = import "common.capnp";

struct VmInfo {
  status @0 :Common.VmStatus;
  spec @1 :Common.VmSpec;
  metrics @2 :Common.VmMetrics;
  chState @3 :Text;                 # state as cloud-hypervisor reports it ("" when unknown)
  socketPath @4 :Text;
  serialLogPath @5 :Text;
}

struct VmList {
  vms @0 :List(Common.VmStatus);
}

struct LogTail {
  lines @0 :List(Text);
  truncated @1 :Bool;               # older lines exist beyond what was returned
}

interface Worker {
  read @0 () -> (status :Common.WorkerStatus);
  listVms @1 () -> (vms :List(Common.VmStatus));
  createVm @2 (spec :Common.VmSpec) -> (result :Common.Result(Common.VmStatus));
  deleteVm @3 (id :Text) -> (result :Common.Result(Common.Empty));
  vmInfo @4 (id :Text) -> (result :Common.Result(VmInfo));
  pauseVm @5 (id :Text) -> (result :Common.Result(Common.VmStatus));
  resumeVm @6 (id :Text) -> (result :Common.Result(Common.VmStatus));
  # The last `lines` lines of the VM's serial console (0 = a default).
  logs @7 (id :Text, lines :UInt32) -> (result :Common.Result(LogTail));
}

# The bootstrap capability of a worker: nothing but a login. Admin tokens
# get the whole `Worker`; reader tokens a `Worker` whose mutating calls are
# refused. A worker run without a token file (loopback only) takes any
# token as admin.
interface WorkerLogin {
  login @0 (token :Text) -> (result :Common.Result(WorkerSession));
}

struct WorkerSession {
  worker @0 :Worker;
  role @1 :Common.Role;
}
