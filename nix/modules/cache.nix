# NixOS module for the Procurator binary cache (`cache serve`): serves and
# accepts narinfo/NAR over HTTP and signs narinfos. The secret signing key
# and the upload token are passed as systemd credentials (never in the
# store); the index and NARs live in the state directory.
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
      description = "Signing key from `cache keygen` or `nix-store --generate-binary-cache-key NAME sk pk` (read as a systemd credential).";
    };
    uploadTokenFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      description = "File holding the token uploaders (CI) present. null: uploads are refused.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.procurator-cache = {
      description = "Procurator Nix binary cache";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ];
      environment = { RUST_LOG = cfg.logLevel; } // cfg.environment;
      serviceConfig = common.hardening // {
        ExecStart = common.execStart {
          inherit (cfg) package extraArgs;
          binary = "cache";
          leading = lib.optional cfg.logJson "--log-json" ++ [ "serve" ];
          settings = {
            listen = cfg.listen;
            data-dir = "/var/lib/procurator-cache";
            key-file = "%d/secret-key";
            upload-token-file = if cfg.uploadTokenFile == null then null else "%d/upload-token";
          } // cfg.settings;
        };
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
