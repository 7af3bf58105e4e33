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
    workerTimeoutSecs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 15;
      description = "Seconds without a heartbeat after which a worker is unhealthy and its VMs are rescheduled.";
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
        ExecStart = common.execStart cfg.package "control_plane"
          ({ listen = cfg.listen; log-json = cfg.logJson; worker-timeout-secs = cfg.workerTimeoutSecs; } // cfg.settings)
          cfg.extraArgs;
        DynamicUser = true;
        Restart = "always";
        RestartSec = 1;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
