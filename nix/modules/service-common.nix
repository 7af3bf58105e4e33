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

  # Options every service module has.
  commonOptions = { name, binary, defaultListen }: {
    enable = lib.mkEnableOption "the Procurator ${name}";
    package = mkOption {
      type = types.package;
      description = "Package providing bin/${binary} (the flake's packages.<system>.${name}).";
    };
    listen = mkOption {
      type = types.str;
      default = defaultListen;
      description = "Address and port the ${name} binds. Loopback by default; expose it deliberately.";
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the listen port in the host firewall.";
    };
    logJson = mkOption {
      type = types.bool;
      default = true;
      description = "Log JSON lines (for the journal and log shippers) instead of text.";
    };
    logLevel = mkOption {
      type = types.str;
      default = "info";
      description = "RUST_LOG filter.";
    };
    settings = mkOption {
      type = settingsType;
      default = { };
      description = "Extra command-line flags: { flag-name = value; } becomes --flag-name value.";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Arguments appended verbatim.";
    };
    environment = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "Extra environment variables.";
    };
  };

  portOf = listen: lib.toInt (lib.last (lib.splitString ":" listen));

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
