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
    tokenFile = common.credentialOption "Token file (`<role>[:<worker-id>] <token>` per line; read as a systemd credential). null: every caller is admin, and the service refuses a non-loopback listen address.";
    longPollTimeoutMs = lib.mkOption {
      type = lib.types.ints.positive;
      default = 25000;
      description = "How long getAssignment waits for a change before answering \"nothing new\".";
    };
  };

  config = lib.mkIf cfg.enable (common.mkService {
    name = "control-plane";
    inherit cfg;
    binary = "control_plane";
    settings = {
      listen = cfg.listen;
      log-json = cfg.logJson;
      heartbeat-timeout-ms = cfg.heartbeatTimeoutMs;
      long-poll-timeout-ms = cfg.longPollTimeoutMs;
    };
    credentials = [
      { flag = "token-file"; name = "tokens"; file = cfg.tokenFile; }
    ];
    unit = {
      description = "Procurator control plane";
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = common.hardening // {
        DynamicUser = true;
      };
    };
  });
}
