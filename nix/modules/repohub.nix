# NixOS module for repohub: the web UI and git hosting (smart HTTP). Bare
# repositories and the SQLite database live in the state directory; git runs
# as a child process, so it is on the unit's PATH. A static user owns the
# repositories so they survive a change of unit settings; its group may read
# the repositories (ci-service joins it), nothing else of the state.
import ./service-module.nix "repohub" ({ lib, pkgs, common, cfg, ... }:
let
  repos = "/var/lib/procurator-repohub/repos";
  reposAcl = pkgs.writeShellScript "procurator-repohub-repos-acl" ''
    set -eu
    ${pkgs.coreutils}/bin/mkdir -p ${repos}
    ${pkgs.coreutils}/bin/chown procurator-repohub:procurator-repohub ${repos}
    ${pkgs.coreutils}/bin/chmod 2750 ${repos}
    ${pkgs.acl}/bin/setfacl -R -m g:procurator-repohub:rX -m d:g:procurator-repohub:rX ${repos}
  '';
in
{
  binary = "repohub";
  defaultListen = "127.0.0.1:8080";
  options = {
    ciUrl = common.nullableStrOption {
      example = "http://127.0.0.1:7100";
      description = "ci_service URL pushes are reported to. null: pushes trigger nothing.";
    };
    ciSecretFile = common.credentialOption "File holding the bearer secret of ci_service's push hook (read as a systemd credential). null: the one generated in ${common.secretsDir} (hook-secret).";
    controlPlaneTokenFile = common.credentialOption "File holding a `reader` token for the control plane (a systemd credential). null: the one generated in ${common.secretsDir} (reader-token).";
    controlPlane = common.nullableStrOption {
      example = "127.0.0.1:7000";
      description = "Control plane address for the cluster page.";
    };
    ciTokenFile = common.credentialOption "File holding a `reader` token of ci_service's read API, sent by the CI panels (--ci-token-file; a systemd credential). null: the one generated in ${common.secretsDir} (reader-token, which ci-service's generated API token file names).";
    openSignup = common.option lib.types.bool false "Let anyone create an account at /signup (--open-signup). Closed by default: create accounts with `repohub admin create-user`.";
    admin = common.nullableStrOption {
      example = "alice";
      description = "The account of this name is an admin (--admin; made so at start, never taken by signup).";
    };
    maxPushBytes = common.option (lib.types.nullOr lib.types.ints.positive) null "The largest pack a push may send, in bytes (--max-push-bytes). null: repohub's default (512 MiB).";
    secureCookies = common.option lib.types.bool false "Mark session cookies Secure (set when served behind HTTPS).";
  };
  extraConfig = {
    users.users.procurator-repohub = {
      isSystemUser = true;
      group = "procurator-repohub";
      home = "/var/lib/procurator-repohub";
    };
    users.groups.procurator-repohub = { };
  };
  service = {
    settings = {
      listen = cfg.listen;
      log-json = cfg.logJson;
      data-dir = "/var/lib/procurator-repohub";
      ci-url = cfg.ciUrl;
      control-plane = cfg.controlPlane;
      secure-cookies = cfg.secureCookies;
      open-signup = cfg.openSignup;
      admin = cfg.admin;
      max-push-bytes = cfg.maxPushBytes;
    };
    credentials = [
      { flag = "ci-secret-file"; name = "ci-secret"; file = common.orGenerated cfg.ciSecretFile "hook-secret"; }
      { flag = "control-plane-token-file"; name = "control-plane-token"; file = common.orGenerated cfg.controlPlaneTokenFile "reader-token"; }
      { flag = "ci-token-file"; name = "ci-token"; file = common.orGenerated cfg.ciTokenFile "reader-token"; }
    ];
    environment = { HOME = "/var/lib/procurator-repohub"; };
    unit = {
      description = "Procurator repohub (git hosting and web UI)";
      after = [ "network.target" ];
      path = [ pkgs.git ];
      serviceConfig = common.hardening // {
        User = "procurator-repohub";
        Group = "procurator-repohub";
        StateDirectory = "procurator-repohub";
        StateDirectoryMode = "0750";
        # The bare repositories (and only they: the database stays 0600)
        # are readable by the group procurator-ci joins: a default ACL on
        # repos/ gives the group read access to everything git creates
        # there, whatever the umask. Runs as root ("+") before the service.
        ExecStartPre = [ "+${reposAcl}" ];
      };
    };
  };
})
