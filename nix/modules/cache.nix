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
  };
  service = {
    leading = lib.optional cfg.logJson "--log-json" ++ [ "serve" ];
    settings = {
      listen = cfg.listen;
      data-dir = "/var/lib/procurator-cache";
    };
    credentials = [
      { flag = "key-file"; name = "secret-key"; file = cfg.secretKeyFile; }
      { flag = "upload-token-file"; name = "upload-token"; file = common.orGenerated cfg.uploadTokenFile "upload-token"; }
    ];
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
