# NixOS module for ci_service: receives push events, keeps its job queue in
# SQLite, evaluates and builds cluster flakes with nix, copies closures to
# the cache and publishes generations to the control plane. Builds go
# through the host's nix-daemon; the service's own nix client state (its
# narinfo cache) lives in the state directory. The cache upload token is a
# systemd credential.
{ config, lib, pkgs, ... }:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.ci-service;
in
{
  options.services.procurator.ci-service = common.commonOptions {
    name = "ci-service";
    binary = "ci_service";
    defaultListen = "127.0.0.1:8090";
  } // {
    cacheUrl = lib.mkOption {
      type = lib.types.str;
      example = "http://127.0.0.1:5000";
      description = "Binary cache closures are copied to.";
    };
    cacheTokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File holding the cache upload token (read as a systemd credential).";
    };
    controlPlane = lib.mkOption {
      type = lib.types.str;
      example = "127.0.0.1:7000";
      description = "Control plane address generations are published to.";
    };
    nixPackage = lib.mkOption {
      type = lib.types.package;
      default = config.nix.package;
      defaultText = lib.literalExpression "config.nix.package";
      description = "Nix used for evaluation, builds and copies.";
    };
  };

  config = lib.mkIf cfg.enable {
    users.users.procurator-ci = {
      isSystemUser = true;
      group = "procurator-ci";
      home = "/var/lib/procurator-ci";
    };
    users.groups.procurator-ci = { };
    # Builds go through the daemon; flakes must be enabled for the client.
    nix.settings.experimental-features = [ "nix-command" "flakes" ];

    systemd.services.procurator-ci-service = {
      description = "Procurator CI (evaluate, build, cache, publish)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      wants = [ "network-online.target" ];
      path = [ cfg.nixPackage pkgs.git ];
      environment = {
        RUST_LOG = cfg.logLevel;
        HOME = "/var/lib/procurator-ci";
        XDG_CACHE_HOME = "/var/lib/procurator-ci/cache";
      } // cfg.environment;
      serviceConfig = common.hardening // {
        ExecStart = common.execStart cfg.package "ci_service"
          ({
            listen = cfg.listen;
            log-json = cfg.logJson;
            data-dir = "/var/lib/procurator-ci";
            cache-url = cfg.cacheUrl;
            cache-token-file = if cfg.cacheTokenFile == null then null else "%d/cache-token";
            control-plane = cfg.controlPlane;
          } // cfg.settings)
          cfg.extraArgs;
        User = "procurator-ci";
        Group = "procurator-ci";
        StateDirectory = "procurator-ci";
        StateDirectoryMode = "0750";
        LoadCredential = lib.optional (cfg.cacheTokenFile != null) "cache-token:${cfg.cacheTokenFile}";
        # Evaluation allocates a lot; nix's GC and builder need W^X off.
        MemoryDenyWriteExecute = false;
        Restart = "always";
        RestartSec = 1;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
