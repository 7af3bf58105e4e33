# NixOS module for the Procurator control plane (`control_plane`): the Master
# Cap'n Proto server. It keeps desired state in memory (CI re-publishes after
# a restart), so it needs no state directory and runs fully sandboxed under a
# dynamic user.
{ config, lib, pkgs, ... }:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.control-plane;
in
{
  options.services.procurator.control-plane = common.commonOptions {
    name = "control-plane";
    binary = "control_plane";
    defaultListen = "127.0.0.1:7000";
  } // {
    heartbeatTimeoutMs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 5000;
      description = "A worker without a heartbeat for this long is unhealthy and its VMs are rescheduled.";
    };
    tokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "Token file (`<role>[:<worker-id>] <token>` per line; read as a systemd credential). null: every caller is admin, and the service refuses a non-loopback listen address.";
    };
    longPollTimeoutMs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 25000;
      description = "How long getAssignment waits for a change before answering \"nothing new\".";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.procurator-control-plane = {
      description = "Procurator control plane";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      environment = { RUST_LOG = cfg.logLevel; } // cfg.environment;
      serviceConfig = common.hardening // {
        ExecStart = common.execStart {
          inherit (cfg) package extraArgs;
          binary = "control_plane";
          settings = {
            listen = cfg.listen;
            log-json = cfg.logJson;
            heartbeat-timeout-ms = cfg.heartbeatTimeoutMs;
            long-poll-timeout-ms = cfg.longPollTimeoutMs;
            token-file = if cfg.tokenFile == null then null else "%d/tokens";
          } // cfg.settings;
        };
        LoadCredential = lib.optional (cfg.tokenFile != null) "tokens:${cfg.tokenFile}";
        DynamicUser = true;
        Restart = "always";
        RestartSec = 1;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
