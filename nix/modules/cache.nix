# NixOS module for the Procurator binary cache (`cache serve`): serves and
# accepts narinfo/NAR over HTTP and signs narinfos. The secret signing key
# and the upload token are passed as systemd credentials (never in the
# store); the index and NARs live in the state directory.
import ./service-module.nix "cache" ({ lib, common, cfg, ... }:
{
  binary = "cache";
  defaultListen = "127.0.0.1:5000";
  options = {
    secretKeyFile = lib.mkOption {
      type = lib.types.path;
      description = "Signing key from `cache keygen` or `nix-store --generate-binary-cache-key NAME sk pk` (read as a systemd credential).";
    };
    uploadTokenFile = common.credentialOption "File holding the token uploaders (CI) present. null: the one generated in ${common.secretsDir} (upload-token), which ci-service uses by default.";
    gcInterval = common.option (lib.types.nullOr lib.types.str) null "Collect garbage this often while serving (--gc-interval, e.g. \"6h\"). null: never (deleting is left to an explicit `cache gc --yes`).";
    keepGenerations = common.option (lib.types.nullOr lib.types.ints.unsigned) null "Generation pins kept per project by gc (--keep-generations; 0 keeps every one). null: the cache's default (10).";
    controlPlane = common.nullableStrOption {
      example = "127.0.0.1:7000";
      description = "Control plane a scheduled gc asks which generations workers still run (their pins are kept however old). null: only the newest keepGenerations are kept.";
    };
    controlPlaneTokenFile = common.credentialOption "File holding a token for controlPlane (a reader's is enough; a systemd credential). null: the one generated in ${common.secretsDir} (reader-token).";
  };
  service = {
    leading = lib.optional cfg.logJson "--log-json" ++ [ "serve" ];
    settings = {
      listen = cfg.listen;
      data-dir = "/var/lib/procurator-cache";
      gc-interval = cfg.gcInterval;
      keep-generations = cfg.keepGenerations;
      control-plane = cfg.controlPlane;
    };
    credentials = [
      { flag = "key-file"; name = "secret-key"; file = cfg.secretKeyFile; }
      { flag = "upload-token-file"; name = "upload-token"; file = common.orGenerated cfg.uploadTokenFile "upload-token"; }
    ] ++ lib.optional (cfg.controlPlane != null)
      { flag = "control-plane-token-file"; name = "control-plane-token"; file = common.orGenerated cfg.controlPlaneTokenFile "reader-token"; };
    unit = {
      description = "Procurator Nix binary cache";
      after = [ "network.target" ];
      serviceConfig = common.hardening // {
        DynamicUser = true;
        StateDirectory = "procurator-cache";
        StateDirectoryMode = "0700";
      };
    };
  };
})
