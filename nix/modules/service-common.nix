# Shared pieces of the Procurator service modules (not a NixOS module
# itself): the option set every service has, the systemd hardening baseline,
# and rendering `settings` into command-line flags.
#
# Every daemon takes its configuration as clap flags (each also readable from
# the environment), so `settings.<flag> = value` becomes `--<flag> value`;
# booleans become bare flags, null drops the flag, lists repeat it.
{ lib }:
let
  inherit (lib) mkOption types;
in
rec {
  settingsType = with types; attrsOf (nullOr (oneOf [ bool int str path (listOf (oneOf [ int str path ])) ]));

  # --name value for every setting, in attribute order.
  toArgs = settings:
    lib.concatLists (lib.mapAttrsToList
      (name: value:
        if value == null || value == false then [ ]
        else if value == true then [ "--${name}" ]
        else if builtins.isList value then lib.concatMap (v: [ "--${name}" (toString v) ]) value
        else [ "--${name}" (toString value) ])
      settings);

  # `leading`: words before the flags (a subcommand like `serve`).
  execStart = { package, binary, leading ? [ ], settings, extraArgs }:
    lib.escapeShellArgs ([ "${package}/bin/${binary}" ] ++ leading ++ toArgs settings ++ extraArgs);

  # An option with a default, the common case: one line per option.
  option = type: default: description: mkOption { inherit type default description; };

  # Options every service module has.
  commonOptions = { name, binary, defaultListen }: {
    enable = lib.mkEnableOption "the Procurator ${name}";
    package = mkOption {
      type = types.package;
      description = "Package providing bin/${binary} (the flake's packages.<system>.${name}).";
    };
    listen = option types.str defaultListen "Address and port the ${name} binds. Loopback by default; expose it deliberately.";
    openFirewall = option types.bool false "Open the listen port in the host firewall.";
    logJson = option types.bool true "Log JSON lines (for the journal and log shippers) instead of text.";
    logLevel = option types.str "info" "RUST_LOG filter.";
    settings = option settingsType { } "Extra command-line flags: { flag-name = value; } becomes --flag-name value.";
    extraArgs = option (types.listOf types.str) [ ] "Arguments appended verbatim.";
    environment = option (types.attrsOf types.str) { } "Extra environment variables.";
  };

  # A path option's value as a flag: a path in the configuration is copied
  # to the store (the daemon reads it there), a string is taken as it is
  # (a file managed on the host, e.g. under /etc), null drops the flag.
  storePath = p: if p == null then null else "${p}";

  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));

  # A secret file the unit reads as a systemd credential (never copied to
  # the store); null leaves the credential and its flag out.
  credentialOption = description: mkOption {
    type = types.nullOr types.path;
    default = null;
    inherit description;
  };

  # Where the secrets generated on first start live: root's only (0700
  # directory, 0600 files), read by systemd as credentials, never in the
  # store. `procurator-secrets` makes whatever is missing, so the services
  # of one host share one set of tokens without any configuration:
  #   admin-token, ci-token, reader-token   one token each (the admin token
  #                                          is what `pcr` needs:
  #                                          PCR_TOKEN_FILE=.../admin-token)
  #   worker-token                          the local worker's `worker:<id>`
  #   upload-token, hook-secret             the cache's and the push hook's
  #   control-plane-tokens                  the control plane's token file
  #   ci-api-tokens                         ci_service's read API (admin
  #                                          and reader tokens)
  #   worker-tokens                         the worker's own RPC (admin)
  # A multi-host cluster copies the tokens it needs, or sets the modules'
  # *File options to files of its own.
  secretsDir = "/var/lib/procurator-secrets";

  # A credential option's file, or the generated secret `name` when unset.
  orGenerated = file: name: if file == null then "${secretsDir}/${name}" else file;

  # The generator (idempotent: existing files are kept; one run at a time).
  # WORKER_ID: the local worker's id, or empty for the host name the worker
  # itself defaults to (letters, digits and '-' kept, the rest as '-').
  secretsScript = ''
    set -eu
    umask 077
    dir=${secretsDir}
    mkdir -p "$dir"
    chmod 0700 "$dir"
    exec 9>"$dir/.lock"
    flock 9
    token() { [ -s "$dir/$1" ] || { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; } > "$dir/$1"; }
    for t in admin-token ci-token reader-token worker-token upload-token hook-secret; do token "$t"; done
    id=''${WORKER_ID:-$(tr -c 'A-Za-z0-9\n-' '-' < /proc/sys/kernel/hostname)}
    printf 'admin %s\nci %s\nreader %s\nworker:%s %s\n' \
      "$(cat "$dir/admin-token")" "$(cat "$dir/ci-token")" "$(cat "$dir/reader-token")" \
      "$id" "$(cat "$dir/worker-token")" > "$dir/control-plane-tokens.new"
    mv "$dir/control-plane-tokens.new" "$dir/control-plane-tokens"
    printf 'admin %s\nreader %s\n' "$(cat "$dir/admin-token")" "$(cat "$dir/reader-token")" > "$dir/ci-api-tokens.new"
    mv "$dir/ci-api-tokens.new" "$dir/ci-api-tokens"
    printf 'admin %s\n' "$(cat "$dir/admin-token")" > "$dir/worker-tokens.new"
    mv "$dir/worker-tokens.new" "$dir/worker-tokens"
    chmod 0600 "$dir"/*
  '';

  # An optional address, URL or name; null leaves its flag out.
  nullableStrOption = { description, example ? null }: mkOption ({
    type = types.nullOr types.str;
    default = null;
    inherit description;
  } // lib.optionalAttrs (example != null) { inherit example; });

  # The config every service module renders when enabled: the unit
  # `procurator-<name>`, started at boot and restarted at once, with
  # RUST_LOG from `logLevel` and ExecStart from `settings` (the user's
  # `settings` and `environment` win over the module's), and the listen port
  # in the firewall when `openFirewall` is set.
  #
  # `credentials`: secret files as { flag, name, file }; each one that is
  # set is loaded as the systemd credential `name` and passed to the daemon
  # as `--<flag> %d/<name>` (`%d`: the unit's credentials directory), in the
  # order given. `unit`: the rest of the unit (description, ordering, PATH),
  # its `serviceConfig` included (a module starts from `hardening` there and
  # relaxes what it needs). `nixDaemon`: the daemon uses the host's
  # nix-daemon (builds, store writes), so NIX_REMOTE points nix at it and
  # the unit starts after its socket and the network (unless `unit` orders
  # itself).
  #
  # Every unit first runs `procurator-<name>-secrets` (a oneshot making the
  # generated secrets that are missing, see `secretsDir`); `workerId` is
  # the local worker's id for the control plane's generated token file.
  mkService = { name, cfg, binary, leading ? [ ], settings, credentials ? [ ], environment ? { }, nixDaemon ? false, unit, workerId ? null, pkgs }:
    let
      set = builtins.filter (c: c.file != null) credentials;
      credentialFlags = builtins.listToAttrs (map (c: {
        name = c.flag;
        value = if c.file == null then null else "%d/${c.name}";
      }) credentials);
      secretsUnit = "procurator-${name}-secrets.service";
    in
    {
      systemd.services."procurator-${name}-secrets" = {
        description = "Procurator ${name}: generate missing secrets in ${secretsDir}";
        path = [ pkgs.coreutils pkgs.util-linux ];
        environment = { WORKER_ID = if workerId == null then "" else workerId; };
        script = secretsScript;
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
        };
      };
      systemd.services."procurator-${name}" = lib.optionalAttrs nixDaemon {
        after = [ "network-online.target" "nix-daemon.socket" ];
        wants = [ "network-online.target" ];
      } // unit // {
        after = (unit.after or (lib.optionals nixDaemon [ "network-online.target" "nix-daemon.socket" ])) ++ [ secretsUnit ];
        requires = [ secretsUnit ];
        wantedBy = [ "multi-user.target" ];
        environment = { RUST_LOG = cfg.logLevel; }
          // lib.optionalAttrs nixDaemon { NIX_REMOTE = "daemon"; }
          // environment // cfg.environment;
        serviceConfig = {
          ExecStart = execStart {
            inherit (cfg) package extraArgs;
            inherit binary leading;
            settings = settings // credentialFlags // cfg.settings;
          };
          LoadCredential = map (c: "${c.name}:${c.file}") set;
          Restart = "always";
          RestartSec = 1;
        } // unit.serviceConfig;
      };
      networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (portOf cfg.listen);
    };

  # The systemd sandbox every service starts from; modules relax what they
  # really need (the worker needs devices and privileges, CI needs nix).
  hardening = {
    NoNewPrivileges = true;
    PrivateTmp = true;
    PrivateDevices = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
    RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [ "@system-service" "~@privileged" "~@resources" ];
    # A filtered call fails (EPERM) instead of killing the daemon: raising
    # the open-file limit (@resources) then only logs a warning, and
    # LimitNOFILE below makes it unnecessary.
    SystemCallErrorNumber = "EPERM";
    LimitNOFILE = 65536;
    RemoveIPC = true;
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    UMask = "0077";
  };
}
