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

  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));

  # A secret file the unit reads as a systemd credential (never copied to
  # the store); null leaves the credential and its flag out.
  credentialOption = description: mkOption {
    type = types.nullOr types.path;
    default = null;
    inherit description;
  };

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
  mkService = { name, cfg, binary, leading ? [ ], settings, credentials ? [ ], environment ? { }, nixDaemon ? false, unit }:
    let
      set = builtins.filter (c: c.file != null) credentials;
      credentialFlags = builtins.listToAttrs (map (c: {
        name = c.flag;
        value = if c.file == null then null else "%d/${c.name}";
      }) credentials);
    in
    {
      systemd.services."procurator-${name}" = lib.optionalAttrs nixDaemon {
        after = [ "network-online.target" "nix-daemon.socket" ];
        wants = [ "network-online.target" ];
      } // unit // {
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
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    UMask = "0077";
  };
}
