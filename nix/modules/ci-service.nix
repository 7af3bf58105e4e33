# NixOS module for ci_service: receives push events, keeps its job queue in
# SQLite, evaluates and builds cluster flakes with nix, copies closures to
# the cache and publishes generations to the control plane. Builds go
# through the host's nix-daemon; the service's own nix client state (its
# narinfo cache) lives in the state directory. The cache upload token and
# the push-hook secret are systemd credentials.
import ./service-module.nix "ci-service" ({ config, lib, pkgs, common, cfg, ... }:
{
  binary = "ci_service";
  defaultListen = "127.0.0.1:7100";
  options = {
    cacheUrl = common.nullableStrOption {
      example = "http://127.0.0.1:5000";
      description = "Binary cache closures are copied to (null: closures stay local).";
    };
    cacheTokenFile = common.credentialOption "File holding the cache upload token (read as a systemd credential). null: the one generated in ${common.secretsDir} (upload-token).";
    controlPlane = common.nullableStrOption {
      example = "127.0.0.1:7000";
      description = "Control plane address generations are published to (null: build only).";
    };
    controlPlaneTokenFile = common.credentialOption "File holding the `ci` token for the control plane (a systemd credential). null: the one generated in ${common.secretsDir} (ci-token).";
    hookSecretFile = common.credentialOption "File holding the secret push hooks must present (read as a systemd credential). null: the one generated in ${common.secretsDir} (hook-secret), which repohub uses by default.";
    deployRef = common.option lib.types.str "refs/heads/main" "Only pushes to this ref publish a generation; others are built.";
    nixPackage = lib.mkOption {
      type = lib.types.package;
      default = config.nix.package;
      defaultText = lib.literalExpression "config.nix.package";
      description = "Nix used for evaluation, builds and copies.";
    };
  };
  extraConfig = {
    users.users.procurator-ci = {
      isSystemUser = true;
      group = "procurator-ci";
      home = "/var/lib/procurator-ci";
    };
    users.groups.procurator-ci = { };
    # CI evaluates flakes through the daemon.
    nix.settings.experimental-features = [ "nix-command" "flakes" ];
  };
  service = {
    settings = {
      listen = cfg.listen;
      log-json = cfg.logJson;
      data-dir = "/var/lib/procurator-ci";
      cache = cfg.cacheUrl;
      control-plane = cfg.controlPlane;
      deploy-ref = cfg.deployRef;
    };
    credentials = [
      { flag = "cache-token-file"; name = "cache-token"; file = common.orGenerated cfg.cacheTokenFile "upload-token"; }
      { flag = "hook-secret-file"; name = "hook-secret"; file = common.orGenerated cfg.hookSecretFile "hook-secret"; }
      { flag = "control-plane-token-file"; name = "control-plane-token"; file = common.orGenerated cfg.controlPlaneTokenFile "ci-token"; }
    ];
    environment = {
      HOME = "/var/lib/procurator-ci";
      XDG_CACHE_HOME = "/var/lib/procurator-ci/cache";
    };
    nixDaemon = true;
    unit = {
      description = "Procurator CI (evaluate, build, cache, publish)";
      path = [ cfg.nixPackage pkgs.git ];
      serviceConfig = common.hardening // {
        User = "procurator-ci";
        Group = "procurator-ci";
        StateDirectory = "procurator-ci";
        StateDirectoryMode = "0750";
        # nix's evaluator (Boehm GC) needs writable+executable mappings, and
        # nix raises its stack limit (setrlimit) at start.
        MemoryDenyWriteExecute = false;
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        # repohub's bare repositories are readable by its group (see
        # repohub.nix): CI mirrors pushed repositories from there.
        SupplementaryGroups = lib.optional ((config.services.procurator.repohub or { }).enable or false) "procurator-repohub";
      };
    };
  };
})
