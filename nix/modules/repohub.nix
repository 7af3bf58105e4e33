# NixOS module for repohub: the web UI and git hosting (smart HTTP). Bare
# repositories and the SQLite database live in the state directory; git runs
# as a child process, so it is on the unit's PATH. A static user owns the
# repositories so they survive a change of unit settings.
{ config, lib, pkgs, ... }:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.repohub;
in
{
  options.services.procurator.repohub = common.commonOptions {
    name = "repohub";
    binary = "repohub";
    defaultListen = "127.0.0.1:8080";
  } // {
    ciUrl = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "http://127.0.0.1:7100";
      description = "ci_service URL pushes are reported to. null: pushes trigger nothing.";
    };
    ciSecretFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File holding the bearer secret of ci_service's push hook (read as a systemd credential).";
    };
    controlPlaneTokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File holding a `reader` token for the control plane (a systemd credential).";
    };
    controlPlane = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "127.0.0.1:7000";
      description = "Control plane address for the cluster page.";
    };
    autonix = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Path of the autonix executable (null: beside repohub, then PATH).";
    };
    secureCookies = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Mark session cookies Secure (set when served behind HTTPS).";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.procurator-repohub = {
      isSystemUser = true;
      group = "procurator-repohub";
      home = "/var/lib/procurator-repohub";
    };
    users.groups.procurator-repohub = { };

    systemd.services.procurator-repohub = {
      description = "Procurator repohub (git hosting and web UI)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      path = [ pkgs.git ];
      environment = { RUST_LOG = cfg.logLevel; HOME = "/var/lib/procurator-repohub"; } // cfg.environment;
      serviceConfig = common.hardening // {
        ExecStart = common.execStart {
          inherit (cfg) package extraArgs;
          binary = "repohub";
          settings = {
            listen = cfg.listen;
            log-json = cfg.logJson;
            data-dir = "/var/lib/procurator-repohub";
            ci-url = cfg.ciUrl;
            ci-secret-file = if cfg.ciSecretFile == null then null else "%d/ci-secret";
            control-plane = cfg.controlPlane;
            control-plane-token-file = if cfg.controlPlaneTokenFile == null then null else "%d/control-plane-token";
            autonix = cfg.autonix;
            secure-cookies = cfg.secureCookies;
          } // cfg.settings;
        };
        User = "procurator-repohub";
        Group = "procurator-repohub";
        StateDirectory = "procurator-repohub";
        StateDirectoryMode = "0750";
        LoadCredential = lib.optional (cfg.ciSecretFile != null) "ci-secret:${cfg.ciSecretFile}"
          ++ lib.optional (cfg.controlPlaneTokenFile != null) "control-plane-token:${cfg.controlPlaneTokenFile}";
        Restart = "always";
        RestartSec = 1;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
