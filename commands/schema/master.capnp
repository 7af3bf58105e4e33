# The Master interface: what the control plane serves (TCP, default
# 127.0.0.1:7000) to CI (publishState), workers (register, getAssignment,
# pushData) and the CLI (status, getWorker).
@0xe7b3a5d91c4f2e03;

using Common = import "common.capnp";
using Worker = import "worker.capnp".Worker;

# What one worker must run: the specs placed on it, of every project (each
# spec carries its project).
struct Assignment {
  workerId @0 :Text;
  generation @1 :UInt64;            # the highest active generation number of any project
  commit @2 :Text;                  # unused since projects: each project has its own commit
  vms @3 :List(Common.VmSpec);
  # VMs to keep as they run, whatever version that is: a replica a rollout
  # has not reached yet. For a held name the worker keeps every live
  # instance it runs and creates nothing; only when it runs none does it
  # create the spec in `vms` (a held name always has one there).
  hold @4 :List(HeldVm);
}

struct HeldVm {
  project @0 :Text;
  name @1 :Text;
}

struct WorkerRegistration {
  workerId @0 :Text;
  address @1 :Text;
  capacity @2 :Common.Resources;
  labels @3 :List(Common.Label);
}

enum Drift {
  converged @0;                     # observed hash equals desired
  pending @1;                       # desired, not yet observed
  drifted @2;                       # observed hash differs from desired
  orphaned @3;                      # observed but not desired
  failed @4;                        # the VM failed on its worker
}

struct VmPlacement {
  name @0 :Text;
  workerId @1 :Text;                # "" when unplaced
  desiredHash @2 :Text;
  observedHash @3 :Text;            # "" when not observed
  state @4 :Common.VmState;
  drift @5 :Drift;
  metrics @6 :Common.VmMetrics;
  vmId @7 :Text;
  project @8 :Text;
  health @9 :Common.Health;         # as the worker reports it; none when not observed
  healthDetail @10 :Text;           # why unhealthy, "" otherwise
}

struct Unplaced {
  name @0 :Text;
  reason @1 :Text;
  project @2 :Text;
}

struct WorkerHealth {
  workerId @0 :Text;
  address @1 :Text;
  healthy @2 :Bool;
  lastSeenMsAgo @3 :UInt64;
  capacity @4 :Common.Resources;
  allocated @5 :Common.Resources;
  observedGeneration @6 :UInt64;
  vmCount @7 :UInt32;
  labels @8 :List(Common.Label);
  metrics @9 :Common.WorkerMetrics;
}

struct ClusterStatus {
  generations @0 :List(Common.Generation);  # the active generation of each project, by project
  convergencePercent @1 :Float64;
  vms @2 :List(VmPlacement);
  workers @3 :List(WorkerHealth);
  unplaced @4 :List(Unplaced);
  rollouts @5 :List(RolloutStatus); # the rollouts not yet done (rolling, paused, reverted)
}

# One group's rollout to its project's active generation.
struct RolloutStatus {
  project @0 :Text;
  group @1 :Text;
  generation @2 :UInt64;
  batch @3 :UInt32;                 # the batch being replaced, 1-based
  batches @4 :UInt32;               # ceil(replicas / maxParallel)
  healthy @5 :UInt32;               # replicas on the new version, healthy for minHealthyMs
  total @6 :UInt32;                 # replicas of the group
  state @7 :Text;                   # rolling, paused, reverted, rolled
  reason @8 :Text;                  # why paused or reverted ("" otherwise)
}

struct PublishOutcome {
  generation @0 :UInt64;
  noop @1 :Bool;                    # same generation and intentHash as the active one
  placed @2 :UInt32;                # VMs of the project placed
  unplaced @3 :List(Unplaced);      # VMs of the project not placed
  project @4 :Text;
}

# cpu, memory and VM count: a project's quota or its usage.
struct Limits {
  cpu @0 :UInt32;
  memoryMb @1 :UInt64;
  vms @2 :UInt32;
}

# One project as `pcr projects` shows it.
struct ProjectStatus {
  project @0 :Text;
  quota @1 :Limits;
  usage @2 :Limits;                 # what its active generation asks for
  generation @3 :Common.Generation; # number 0 when nothing was published
  convergencePercent @4 :Float64;
  placed @5 :UInt32;
  unplaced @6 :UInt32;
  # Generations some worker still runs a VM of (for each running VM, the
  # newest remembered generation whose specs have its name and content
  # hash): what the cache's retention keeps beside the newest K.
  liveGenerations @7 :List(UInt64);
}

interface Master {
  # Replaces the desired state of `project` ("" = "default") and of no
  # other project; an empty `vmSpecs` deletes the project's VMs.
  publishState @0 (commit :Text, generation :UInt64, intentHash :Text,
                   vmSpecs :List(Common.VmSpec), project :Text,
                   meta :PublishMeta)
      -> (result :Common.Result(PublishOutcome));

  # A worker registers with its capability; calls re-registering the same id
  # from the same address replace the old capability.
  registerWorker @1 (registration :WorkerRegistration, worker :Worker)
      -> (result :Common.Result(Common.Empty));

  # Long-poll: answers at once when the worker's assignment is newer than
  # lastSeenGeneration (or changed since), otherwise when it changes or after
  # the server's timeout (then `changed` is false).
  getAssignment @2 (workerId :Text, lastSeenGeneration :UInt64, lastSeenRevision :UInt64)
      -> (result :Common.Result(AssignmentReply));

  pushData @3 (workerId :Text, observedGeneration :UInt64,
               runningVms :List(Common.RunningVm), metrics :Common.WorkerMetrics)
      -> (result :Common.Result(Common.Empty));

  getClusterStatus @4 () -> (status :ClusterStatus);

  getWorker @5 (workerId :Text) -> (result :Common.Result(WorkerRef));

  # The generation history of `project`, or of every project when "".
  listGenerations @6 (project :Text) -> (generations :List(Common.Generation));

  # Every project the control plane knows (has a quota for or a
  # generation of): quota, usage, active generation and convergence.
  projects @7 () -> (projects :List(ProjectStatus));

  # The event log, oldest first: events with an id above `afterId`, at
  # most `limit` (0 = the server's page size), of `project` ("" = every
  # project the caller may see). A `ci:<project>` token sees its project
  # only; a worker token the events of its own worker id.
  listEvents @8 (project :Text, afterId :UInt64, limit :UInt32)
      -> (events :List(Event));

  # One remembered generation of `project` with the specs it published
  # (`pcr diff`, the VM pages).
  getGeneration @9 (project :Text, number :UInt64)
      -> (result :Common.Result(GenerationDetail));
}

# Where a generation came from, as CI knows it.
struct PublishMeta {
  author @0 :Text;                  # the commit's author name
  message @1 :Text;                 # the first line of the commit message
  jobId @2 :UInt64;                 # the CI job (0 for a hand publish)
}

# One thing that happened in the cluster. `kind` is one of
# generation-published, generation-converged, vm-placed, vm-replaced,
# vm-removed, vm-failed, vm-unplaced, worker-joined, worker-unhealthy,
# worker-healthy, rollout-batch, rollout-paused, rollout-reverted,
# rollout-done; the fields a kind has no use for are empty (0).
struct Event {
  id @0 :UInt64;                    # increasing, never reused by one control plane's state
  atMs @1 :UInt64;                  # wall clock, ms since the Unix epoch
  project @2 :Text;                 # "" for a worker's events
  kind @3 :Text;
  vm @4 :Text;
  workerId @5 :Text;
  generation @6 :UInt64;
  message @7 :Text;                 # one line a person reads
}

struct GenerationDetail {
  generation @0 :Common.Generation;
  vmSpecs @1 :List(Common.VmSpec);
}

struct AssignmentReply {
  changed @0 :Bool;
  assignment @1 :Assignment;
  # Bumped whenever this worker's assignment changes within a generation
  # (rescheduling after a worker failure); the worker echoes it back.
  revision @2 :UInt64;
}

struct WorkerRef {
  worker @0 :Worker;
}

# The bootstrap capability of the control plane: nothing but a login. A
# valid token returns the `Master` capability for its role; a server run
# without a token file (loopback only) takes any token as admin.
interface MasterLogin {
  login @0 (token :Text) -> (result :Common.Result(MasterSession));
}

struct MasterSession {
  master @0 :Master;
  role @1 :Common.Role;
  workerId @2 :Text;                # the id a worker token is bound to, "" otherwise
  project @3 :Text;                 # the one project a `ci:<project>` token may publish for, "" otherwise
}
