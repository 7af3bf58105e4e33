# NixOS module for ci_service: receives push events, keeps its job queue in
# SQLite, evaluates and builds cluster flakes with nix, copies closures to
# the cache and publishes generations to the control plane. Builds go
# through the host's nix-daemon; the service's own nix client state (its
# narinfo cache) lives in the state directory. The cache upload token, the
# push-hook secret and the read API's token file are systemd credentials.
#
# Pushed flakes are evaluated by an unprivileged user (`evalUser`, its own
# system user by default) inside a bubblewrap jail. Switching to that user
# needs root's CAP_SETUID/CAP_SETGID (and CAP_CHOWN for its home), so with
# an evaluation user the unit runs as root bounded to those three
# capabilities: a change from root to the evaluation user clears every
# capability, whereas ambient capabilities given to a non-root user would
# pass on to the jail (and bwrap refuses to start with them).
import ./service-module.nix "ci-service" ({ config, lib, pkgs, common, cfg, ... }:
let
  defaultEvalUser = "procurator-ci-eval";
  jailed = cfg.evalUser != null;
in
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
    projectsFile = common.option (lib.types.nullOr lib.types.path) null "Deploy rights (--projects): TOML `[[deploy]]` tables of `repo`, `project` and `ref`. null: every repository deploys the project `default` on deployRef (single-project setup), or the project repohub names it the deploy repository of.";
    apiTokenFile = common.credentialOption "Token file of the read API (--api-token-file: `reader <token>` and `admin <token>` lines; a systemd credential). null: the one generated in ${common.secretsDir} (ci-api-tokens: the host's admin and reader tokens, the reader one repohub sends).";
    evalUser = common.option (lib.types.nullOr lib.types.str) defaultEvalUser "Unprivileged user that evaluates and builds pushed flakes (--eval-user), in a bubblewrap jail; `${defaultEvalUser}` is made as a system user. null: nix runs as the service's own user (procurator-ci), jailed all the same, and the unit keeps no capabilities.";
    maxJobLogBytes = common.option (lib.types.nullOr lib.types.ints.positive) null "A job's log holds at most this many bytes (--max-job-log-bytes); a build printing more is stopped. null: ci_service's default.";
    nixPackage = lib.mkOption {
      type = lib.types.package;
      default = config.nix.package;
      defaultText = lib.literalExpression "config.nix.package";
      description = "Nix used for evaluation, builds and copies.";
    };
  };
  extraConfig = {
    users.users = {
      procurator-ci = {
        isSystemUser = true;
        group = "procurator-ci";
        home = "/var/lib/procurator-ci";
      };
    } // lib.optionalAttrs (cfg.evalUser == defaultEvalUser) {
      # Its home is ci_service's eval-home directory, made and handed over
      # at start.
      ${defaultEvalUser} = {
        isSystemUser = true;
        group = defaultEvalUser;
      };
    };
    users.groups = { procurator-ci = { }; }
      // lib.optionalAttrs (cfg.evalUser == defaultEvalUser) { ${defaultEvalUser} = { }; };
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
      projects = common.storePath cfg.projectsFile;
      eval-user = cfg.evalUser;
      max-job-log-bytes = cfg.maxJobLogBytes;
    };
    credentials = [
      { flag = "cache-token-file"; name = "cache-token"; file = common.orGenerated cfg.cacheTokenFile "upload-token"; }
      { flag = "hook-secret-file"; name = "hook-secret"; file = common.orGenerated cfg.hookSecretFile "hook-secret"; }
      { flag = "control-plane-token-file"; name = "control-plane-token"; file = common.orGenerated cfg.controlPlaneTokenFile "ci-token"; }
      { flag = "api-token-file"; name = "api-tokens"; file = common.orGenerated cfg.apiTokenFile "ci-api-tokens"; }
    ];
    environment = {
      HOME = "/var/lib/procurator-ci";
      XDG_CACHE_HOME = "/var/lib/procurator-ci/cache";
    };
    nixDaemon = true;
    unit = {
      description = "Procurator CI (evaluate, build, cache, publish)";
      # bwrap: the jail every pushed flake is evaluated in.
      path = [ cfg.nixPackage pkgs.git pkgs.bubblewrap ];
      serviceConfig = common.hardening // {
        User = if jailed then "root" else "procurator-ci";
        Group = if jailed then "root" else "procurator-ci";
        StateDirectory = "procurator-ci";
        StateDirectoryMode = "0750";
        # nix's evaluator (Boehm GC) needs writable+executable mappings, and
        # nix raises its stack limit (setrlimit) at start.
        MemoryDenyWriteExecute = false;
        SystemCallFilter = [ "@system-service" "~@privileged" ];
        # repohub's bare repositories are readable by its group (see
        # repohub.nix): CI mirrors pushed repositories from there.
        SupplementaryGroups = lib.optional ((config.services.procurator.repohub or { }).enable or false) "procurator-repohub";
      } // lib.optionalAttrs jailed {
        # Become the evaluation user (SETUID, SETGID) and give it its home
        # (CHOWN); nothing else, not even reading others' files.
        CapabilityBoundingSet = [ "CAP_SETUID" "CAP_SETGID" "CAP_CHOWN" ];
        # The set*id and chown calls (@system-service has them; the
        # baseline's ~@privileged takes them away), and what bubblewrap does
        # as the evaluation user in its own user namespace: mount and
        # pivot_root (@mount).
        SystemCallFilter = [ "@system-service" "@mount" ];
        # bubblewrap and nix's sandbox need namespaces; a user namespace may
        # mount a new /proc only if the service's /proc is fully visible:
        # no subset, no hidden pids, no read-only /proc/sys or masked
        # /proc/kmsg over it.
        RestrictNamespaces = false;
        ProtectProc = "default";
        ProcSubset = "all";
        ProtectKernelTunables = false;
        ProtectKernelLogs = false;
      };
    };
  };
})
