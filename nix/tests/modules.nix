# Renders the service modules of nix/modules (not host.nix or vm-module.nix)
# with a stand-in for nixpkgs' lib (only what they use), so their units can
# be checked without nixpkgs: each module's ExecStart arguments and
# LoadCredential lines with every optional file unset and with every one
# set, the firewall rule, the sandboxes and the shape of the shared options.
#
#   nix-instantiate --eval --strict nix/tests/modules.nix
#
# evaluates to { failed = [ ... ]; passed = N; total = N; } as eval.nix does.
let
  inherit (builtins) attrNames concatLists concatStringsSep elemAt filter length map split;

  # mkOption and mkIf keep what they were given, so the test sees the
  # declarations and the condition as data.
  lib = {
    mkOption = o: { option = o; };
    mkEnableOption = d: { option = { type = "bool"; default = false; description = "Whether to enable ${d}."; }; };
    mkIf = condition: content: { inherit condition content; };
    literalExpression = text: { literal = text; };
    types = {
      str = "str"; bool = "bool"; int = "int"; path = "path"; package = "package";
      ints.positive = "positive";
      nullOr = t: { nullOr = t; };
      listOf = t: { listOf = t; };
      attrsOf = t: { attrsOf = t; };
      oneOf = ts: { oneOf = ts; };
    };
    optional = c: x: if c then [ x ] else [ ];
    optionals = c: x: if c then x else [ ];
    optionalAttrs = c: x: if c then x else { };
    inherit concatLists;
    concatMap = f: l: concatLists (map f l);
    mapAttrsToList = f: s: map (n: f n s.${n}) (attrNames s);
    # Unquoted, so the expected command lines below read plainly.
    escapeShellArgs = concatStringsSep " ";
    toInt = builtins.fromJSON;
    last = l: elemAt l (length l - 1);
    splitString = sep: s: filter builtins.isString (split sep s);
  };
  pkgs = {
    git = "git"; bubblewrap = "bubblewrap"; iproute2 = "iproute2"; cloud-hypervisor = "cloud-hypervisor";
    coreutils = "/coreutils"; util-linux = "/util-linux"; acl = "/acl";
    # The script's text rides along in its "path", so a test can read what
    # a unit runs.
    writeShellScript = name: text: "/script/${name}:${text}";
  };

  unset = {
    enable = true; package = "/pkg"; listen = "127.0.0.1:9999"; openFirewall = true;
    logJson = true; logLevel = "debug"; settings = { extra-flag = "x"; }; extraArgs = [ "--more" ];
    environment = { FOO = "bar"; };
    secretKeyFile = "/run/keys/sk"; uploadTokenFile = null; heartbeatTimeoutMs = 5000; tokenFile = null;
    longPollTimeoutMs = 25000; cacheUrl = null; cacheTokenFile = null; controlPlane = null;
    controlPlaneTokenFile = null; hookSecretFile = null; deployRef = "refs/heads/main"; nixPackage = "nix";
    ciUrl = null; ciSecretFile = null; secureCookies = false; workerId = null; advertise = null;
    cachePublicKey = null; cpu = null; memoryMb = null; labels = { }; clusterTokenFile = null;
    cloudHypervisor = "/ch"; vmUser = null; metricsListen = null;
    quotasFile = null; projectsFile = null; apiTokenFile = null; evalUser = "procurator-ci-eval";
    maxJobLogBytes = null; ciTokenFile = null; openSignup = false; admin = null; maxPushBytes = null;
    gcInterval = null; keepGenerations = null;
  };
  set = unset // {
    logJson = false; openFirewall = false; uploadTokenFile = "/run/keys/up"; tokenFile = "/run/keys/tok";
    cacheUrl = "http://c"; cacheTokenFile = "/run/keys/ct"; controlPlane = "cp:7000";
    controlPlaneTokenFile = "/run/keys/cpt"; hookSecretFile = "/run/keys/hs"; ciUrl = "http://ci";
    ciSecretFile = "/run/keys/cs"; secureCookies = true; workerId = "w1";
    advertise = "1.2.3.4:6000"; cachePublicKey = "k:1"; cpu = 4; memoryMb = 1024; labels = { zone = "a"; b = "c"; };
    clusterTokenFile = "/run/keys/clt"; vmUser = "procurator-vm"; metricsListen = "127.0.0.1:9464";
    quotasFile = "/etc/pcr/quotas.toml"; projectsFile = "/etc/pcr/projects.toml"; apiTokenFile = "/run/keys/api";
    evalUser = "eval"; maxJobLogBytes = 1000; ciTokenFile = "/run/keys/cit"; openSignup = true; admin = "alice";
    maxPushBytes = 2048; gcInterval = "6h"; keepGenerations = 5;
  };
  # ci-service without an evaluation user: the unit keeps the baseline.
  cfgOf = name: if name == "ci-service" then unset // { evalUser = null; } else unset;

  modules = [ "cache" "control-plane" "ci-service" "repohub" "worker" ];
  # The module `name` evaluated with `cfg` as its settings (and, for the
  # worker, a host module that is enabled exactly when the files are set).
  render = name: cfg: import (../modules + "/${name}.nix") {
    inherit lib pkgs;
    config = {
      services.procurator.${name} = cfg;
      nix.package = "nix";
      procurator.host = {
        enable = cfg == set; bridge = "pcrbr0"; tapPrefix = "pcrt";
        subnet = "10.100.0.0/24"; upstreamDns = null;
      };
    };
  };
  serviceConfig = name: cfg: (render name cfg).config.content.systemd.services."procurator-${name}".serviceConfig;
  # ExecStart without the binary's store path.
  args = name: cfg:
    let words = filter builtins.isString (split " " (serviceConfig name cfg).ExecStart);
    in concatStringsSep " " (builtins.tail words);

  # Where the generated secrets live (service-common's secretsDir).
  gen = "/var/lib/procurator-secrets";

  want = {
    args = {
      cache.unset = "--log-json serve --data-dir /var/lib/procurator-cache --extra-flag x --key-file %d/secret-key --listen 127.0.0.1:9999 --upload-token-file %d/upload-token --more";
      cache.set = "serve --control-plane cp:7000 --control-plane-token-file %d/control-plane-token --data-dir /var/lib/procurator-cache --extra-flag x --gc-interval 6h --keep-generations 5 --key-file %d/secret-key --listen 127.0.0.1:9999 --upload-token-file %d/upload-token --more";
      control-plane.unset = "--extra-flag x --heartbeat-timeout-ms 5000 --listen 127.0.0.1:9999 --log-json --long-poll-timeout-ms 25000 --state-dir /var/lib/procurator-control-plane --token-file %d/tokens --more";
      control-plane.set = "--extra-flag x --heartbeat-timeout-ms 5000 --listen 127.0.0.1:9999 --long-poll-timeout-ms 25000 --metrics-listen 127.0.0.1:9464 --quotas /etc/pcr/quotas.toml --state-dir /var/lib/procurator-control-plane --token-file %d/tokens --more";
      ci-service.unset = "--api-token-file %d/api-tokens --cache-token-file %d/cache-token --control-plane-token-file %d/control-plane-token --data-dir /var/lib/procurator-ci --deploy-ref refs/heads/main --eval-user procurator-ci-eval --extra-flag x --hook-secret-file %d/hook-secret --listen 127.0.0.1:9999 --log-json --more";
      ci-service.set = "--api-token-file %d/api-tokens --cache http://c --cache-token-file %d/cache-token --control-plane cp:7000 --control-plane-token-file %d/control-plane-token --data-dir /var/lib/procurator-ci --deploy-ref refs/heads/main --eval-user eval --extra-flag x --hook-secret-file %d/hook-secret --listen 127.0.0.1:9999 --max-job-log-bytes 1000 --projects /etc/pcr/projects.toml --more";
      repohub.unset = "--ci-secret-file %d/ci-secret --ci-token-file %d/ci-token --control-plane-token-file %d/control-plane-token --data-dir /var/lib/procurator-repohub --extra-flag x --listen 127.0.0.1:9999 --log-json --more";
      repohub.set = "--admin alice --ci-secret-file %d/ci-secret --ci-token-file %d/ci-token --ci-url http://ci --control-plane cp:7000 --control-plane-token-file %d/control-plane-token --data-dir /var/lib/procurator-repohub --extra-flag x --listen 127.0.0.1:9999 --max-push-bytes 2048 --open-signup --secure-cookies --more";
      worker.unset = "--ch-binary /ch/bin/cloud-hypervisor --cluster-token-file %d/cluster-token --extra-flag x --listen 127.0.0.1:9999 --log-json --run-dir /var/lib/procurator-worker --token-file %d/tokens --more";
      worker.set = "--advertise 1.2.3.4:6000 --bridge pcrbr0 --cache-public-key k:1 --ch-binary /ch/bin/cloud-hypervisor --closure-source http://c --cluster-token-file %d/cluster-token --control-plane cp:7000 --cpu 4 --extra-flag x --label b=c --label zone=a --listen 127.0.0.1:9999 --memory-mb 1024 --metrics-listen 127.0.0.1:9464 --run-dir /var/lib/procurator-worker --tap-prefix pcrt --token-file %d/tokens --vm-subnet 10.100.0.0/24 --vm-user procurator-vm --worker-id w1 --more";
    };
    loadCredential = {
      cache.unset = [ "secret-key:/run/keys/sk" "upload-token:${gen}/upload-token" ];
      cache.set = [ "secret-key:/run/keys/sk" "upload-token:/run/keys/up" "control-plane-token:/run/keys/cpt" ];
      control-plane.unset = [ "tokens:${gen}/control-plane-tokens" ];
      control-plane.set = [ "tokens:/run/keys/tok" ];
      ci-service.unset = [ "cache-token:${gen}/upload-token" "hook-secret:${gen}/hook-secret" "control-plane-token:${gen}/ci-token" "api-tokens:${gen}/ci-api-tokens" ];
      ci-service.set = [ "cache-token:/run/keys/ct" "hook-secret:/run/keys/hs" "control-plane-token:/run/keys/cpt" "api-tokens:/run/keys/api" ];
      repohub.unset = [ "ci-secret:${gen}/hook-secret" "control-plane-token:${gen}/reader-token" "ci-token:${gen}/reader-token" ];
      repohub.set = [ "ci-secret:/run/keys/cs" "control-plane-token:/run/keys/cpt" "ci-token:/run/keys/cit" ];
      worker.unset = [ "tokens:${gen}/worker-tokens" "cluster-token:${gen}/worker-token" ];
      worker.set = [ "tokens:/run/keys/tok" "cluster-token:/run/keys/clt" ];
    };
  };

  cases = concatLists (map (name: concatLists (map (which:
    let cfg = { inherit unset set; }.${which}; in [
      {
        name = "${name}, every optional file ${which}: ExecStart";
        got = args name cfg;
        want = want.args.${name}.${which};
      }
      {
        name = "${name}, every optional file ${which}: LoadCredential";
        got = (serviceConfig name cfg).LoadCredential;
        want = want.loadCredential.${name}.${which};
      }
    ]) [ "unset" "set" ])) modules) ++ [
    {
      name = "the listen port is opened only with openFirewall";
      got = map (name: map (cfg: (render name cfg).config.content.networking.firewall.allowedTCPPorts) [ unset set ]) modules;
      want = map (_: [ [ 9999 ] [ ] ]) modules;
    }
    {
      name = "a unit is rendered only when enabled, restarts at once, logs at logLevel";
      got = map (name:
        let c = (render name unset).config; unit = c.content.systemd.services."procurator-${name}"; in
        [ c.condition unit.serviceConfig.Restart unit.serviceConfig.RestartSec unit.environment.RUST_LOG unit.environment.FOO unit.wantedBy ]) modules;
      want = map (_: [ true "always" 1 "debug" "bar" [ "multi-user.target" ] ]) modules;
    }
    {
      name = "the hardened units keep the sandbox baseline; CI relaxes only what nix needs";
      got = map (name: with serviceConfig name (cfgOf name); [ ProtectSystem PrivateDevices MemoryDenyWriteExecute SystemCallFilter UMask ])
        [ "cache" "control-plane" "ci-service" "repohub" ];
      want = [
        [ "strict" true true [ "@system-service" "~@privileged" "~@resources" ] "0077" ]
        [ "strict" true true [ "@system-service" "~@privileged" "~@resources" ] "0077" ]
        [ "strict" true false [ "@system-service" "~@privileged" ] "0077" ]
        [ "strict" true true [ "@system-service" "~@privileged" "~@resources" ] "0077" ]
      ];
    }
    {
      name = "the worker's own sandbox: root with a bounded capability set and a syscall deny list, devices, the system read-only, VMs outlive it";
      got = removeAttrs (serviceConfig "worker" unset) [ "ExecStart" "LoadCredential" ];
      want = {
        NoNewPrivileges = true; PrivateTmp = true; ProtectSystem = "full"; ProtectHome = true;
        ProtectKernelModules = true; ProtectKernelLogs = true; ProtectControlGroups = true; ProtectClock = true;
        ProtectKernelTunables = true; ProtectHostname = true; RestrictRealtime = true; RestrictSUIDSGID = true;
        RemoveIPC = true; SystemCallErrorNumber = "EPERM"; UMask = "0077";
        LockPersonality = true; SystemCallArchitectures = "native";
        CapabilityBoundingSet = [ "CAP_NET_ADMIN" "CAP_SETUID" "CAP_SETGID" "CAP_CHOWN" "CAP_FOWNER" "CAP_DAC_OVERRIDE" "CAP_KILL" ];
        SystemCallFilter = [ "~@clock" "~@cpu-emulation" "~@debug" "~@module" "~@mount" "~@obsolete" "~@raw-io" "~@reboot" "~@swap" ];
        KillMode = "process"; StateDirectory = "procurator-worker"; StateDirectoryMode = "0700";
        CacheDirectory = "procurator-worker";
        DeviceAllow = [ "/dev/kvm rw" "/dev/net/tun rw" "/dev/vhost-net rw" ];
        DevicePolicy = "closed";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
        LimitNOFILE = 65536; Restart = "always"; RestartSec = 1;
      };
    }
    {
      name = "every other unit: no capabilities, no new privileges, IP and unix sockets only, the system read-only, a private /tmp";
      got = map (name: with serviceConfig name (cfgOf name); [
        CapabilityBoundingSet AmbientCapabilities NoNewPrivileges RestrictAddressFamilies ProtectSystem
        PrivateTmp ProtectHome RestrictNamespaces SystemCallErrorNumber LimitNOFILE
      ]) [ "cache" "control-plane" "ci-service" "repohub" ];
      want = map (_: [ "" "" true [ "AF_INET" "AF_INET6" "AF_UNIX" ] "strict" true true true "EPERM" 65536 ])
        [ "cache" "control-plane" "ci-service" "repohub" ];
    }
    {
      name = "CI with an evaluation user (the default): root bounded to SETUID, SETGID and CHOWN, namespaces and a fully visible /proc for bubblewrap, which is on its PATH";
      got = let u = (render "ci-service" unset).config.content.systemd.services.procurator-ci-service; in
        with u.serviceConfig; [
          User Group CapabilityBoundingSet AmbientCapabilities SystemCallFilter RestrictNamespaces ProtectProc
          ProcSubset ProtectKernelTunables ProtectKernelLogs NoNewPrivileges ProtectSystem
          (builtins.elem "bubblewrap" u.path)
        ];
      want = [
        "root" "root" [ "CAP_SETUID" "CAP_SETGID" "CAP_CHOWN" ] "" [ "@system-service" "@mount" ] false "default"
        "all" false false true "strict" true
      ];
    }
    {
      name = "CI without an evaluation user runs as procurator-ci; the default evaluation user (only) is made";
      got = [
        (serviceConfig "ci-service" (cfgOf "ci-service")).User
        (serviceConfig "ci-service" (cfgOf "ci-service")).CapabilityBoundingSet
        (attrNames (render "ci-service" unset).config.content.users.users)
        (attrNames (render "ci-service" set).config.content.users.users)
        (attrNames (render "ci-service" (cfgOf "ci-service")).config.content.users.groups)
      ];
      want = [ "procurator-ci" "" [ "procurator-ci" "procurator-ci-eval" ] [ "procurator-ci" ] [ "procurator-ci" ] ];
    }
    {
      name = "every unit requires its secrets generator, a root oneshot that keeps existing files and writes 0600 ones in a 0700 directory";
      got = map (name:
        let
          units = (render name unset).config.content.systemd.services;
          unit = units."procurator-${name}";
          gen = units."procurator-${name}-secrets";
          has = needle: builtins.length (split needle gen.script) > 1;
        in [
          (builtins.elem "procurator-${name}-secrets.service" unit.requires)
          (builtins.elem "procurator-${name}-secrets.service" unit.after)
          gen.serviceConfig.Type gen.serviceConfig.RemainAfterExit gen.serviceConfig.UMask
          (has "umask 077") (has "chmod 0700 \"[$]dir\"") (has "chmod 0600 \"[$]dir\"/[*]") (has "flock 9")
          (has "-s \"[$]dir/[$]1\"")
        ]) modules;
      want = map (_: [ true true "oneshot" true "0077" true true true true true ]) modules;
    }
    {
      name = "the generated control-plane token file names the local worker's id";
      got = [
        ((render "control-plane" unset).config.content.systemd.services."procurator-control-plane-secrets".environment.WORKER_ID)
        ((import ../modules/control-plane.nix {
          inherit lib pkgs;
          config = {
            services.procurator.control-plane = unset;
            services.procurator.worker.workerId = "w7";
            nix.package = "nix";
          };
        }).config.content.systemd.services."procurator-control-plane-secrets".environment.WORKER_ID)
      ];
      want = [ "" "w7" ];
    }
    {
      name = "repohub's repositories (only) are group-readable by CI, which joins the group when repohub runs";
      got = [
        (let pre = builtins.elemAt (serviceConfig "repohub" unset).ExecStartPre 0; in
          builtins.substring 0 9 pre == "+/script/"
          && builtins.length (split "setfacl -R -m g:procurator-repohub:rX -m d:g:procurator-repohub:rX /var/lib/procurator-repohub/repos" pre) > 1)
        (serviceConfig "repohub" unset).UMask
        (serviceConfig "ci-service" unset).SupplementaryGroups
        ((import ../modules/ci-service.nix {
          inherit lib pkgs;
          config = {
            services.procurator.ci-service = unset;
            services.procurator.repohub.enable = true;
            nix.package = "nix";
          };
        }).config.content.systemd.services."procurator-ci-service".serviceConfig.SupplementaryGroups)
      ];
      want = [ true "0077" [ ] [ "procurator-repohub" ] ];
    }
    {
      name = "credential and optional string options";
      got = with (render "ci-service" unset).options.services.procurator.ci-service; [ hookSecretFile.option controlPlane.option ];
      want = [
        { type.nullOr = "path"; default = null; description = "File holding the secret push hooks must present (read as a systemd credential). null: the one generated in /var/lib/procurator-secrets (hook-secret), which repohub uses by default."; }
        { type.nullOr = "str"; default = null; example = "127.0.0.1:7000"; description = "Control plane address generations are published to (null: build only)."; }
      ];
    }
  ];

  results = map (c: c // { ok = c.got == c.want; }) cases;
  failed = map (c: { inherit (c) name got want; }) (filter (c: !c.ok) results);
in
{
  inherit failed;
  passed = length (filter (c: c.ok) results);
  total = length cases;
}
