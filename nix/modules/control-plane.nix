# NixOS module for the Procurator control plane (`control_plane`): the Master
# Cap'n Proto server. It keeps the generation history (with each
# generation's specs) and the event log in /var/lib/procurator-control-plane/
# state.sqlite (--state-dir), so history, events and each project's active
# generation survive a restart, and runs fully sandboxed under a dynamic
# user: no capabilities, no privileged or resource syscalls, IP and unix
# sockets only, the file system read-only but for its state directory.
import ./service-module.nix "control-plane" ({ lib, common, cfg, ... }:
{
  binary = "control_plane";
  defaultListen = "127.0.0.1:7000";
  options = {
    heartbeatTimeoutMs = common.option lib.types.ints.positive 5000 "A worker without a heartbeat for this long is unhealthy and its VMs are rescheduled.";
    tokenFile = common.credentialOption "Token file (`<role>[:<worker-id>] <token>` per line; read as a systemd credential). null: the one generated in ${common.secretsDir} (admin, ci, reader and the local worker's token).";
    metricsListen = common.nullableStrOption {
      example = "127.0.0.1:9464";
      description = "Serve Prometheus metrics (GET /metrics, no token) on this address (--metrics-listen). null: off. Keep it on loopback or a monitoring network.";
    };
    longPollTimeoutMs = common.option lib.types.ints.positive 25000 "How long getAssignment waits for a change before answering \"nothing new\".";
    quotasFile = common.option (lib.types.nullOr lib.types.path) null "Per-project quotas (--quotas): TOML with an optional [default] table and [projects.<name>] tables of vCPUs, memory MiB and VMs; without [default], unlisted projects are refused. Re-read on SIGHUP. null: every project may publish, unlimited.";
  };
  service = {
    settings = {
      listen = cfg.listen;
      log-json = cfg.logJson;
      heartbeat-timeout-ms = cfg.heartbeatTimeoutMs;
      long-poll-timeout-ms = cfg.longPollTimeoutMs;
      quotas = common.storePath cfg.quotasFile;
      metrics-listen = cfg.metricsListen;
      state-dir = "/var/lib/procurator-control-plane";
    };
    credentials = [
      { flag = "token-file"; name = "tokens"; file = common.orGenerated cfg.tokenFile "control-plane-tokens"; }
    ];
    unit = {
      description = "Procurator control plane";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = common.hardening // {
        DynamicUser = true;
        StateDirectory = "procurator-control-plane";
        StateDirectoryMode = "0700";
      };
    };
  };
})
