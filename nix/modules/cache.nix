# NixOS module for the Procurator binary cache (`cache`): serves and accepts
# narinfo/NAR over HTTP and signs narinfos. The secret signing key and the
# upload token are passed as systemd credentials (never in the store); the
# NARs live in the state directory.
{ config, lib, pkgs, ... }:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.cache;
in
{
  options.services.procurator.cache = common.commonOptions {
    name = "cache";
    binary = "cache";
    defaultListen = "127.0.0.1:5000";
  } // {
    secretKeyFile = lib.mkOption {
      type = lib.types.path;
      description = "Signing key from `nix-store --generate-binary-cache-key NAME sk pk` (read as a systemd credential).";
    };
    uploadTokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File holding the token uploaders must present. null: uploads are refused.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.procurator-cache = {
      description = "Procurator Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment = { RUST_LOG = cfg.logLevel; } // cfg.environment;
      serviceConfig = common.hardening // {
        ExecStart = common.execStart cfg.package "cache"
          ({
            listen = cfg.listen;
            log-json = cfg.logJson;
            data-dir = "/var/lib/procurator-cache";
            secret-key-file = "%d/secret-key";
            upload-token-file = if cfg.uploadTokenFile == null then null else "%d/upload-token";
          } // cfg.settings)
          cfg.extraArgs;
        DynamicUser = true;
        StateDirectory = "procurator-cache";
        StateDirectoryMode = "0700";
        LoadCredential = [ "secret-key:${cfg.secretKeyFile}" ]
          ++ lib.optional (cfg.uploadTokenFile != null) "upload-token:${cfg.uploadTokenFile}";
        Restart = "always";
        RestartSec = 1;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
