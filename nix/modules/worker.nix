# NixOS module for the Procurator worker: one Cloud Hypervisor process per
# VM, reconciled to the control plane's assignment. It runs as root because
# it creates TAP devices, adds closures to the Nix store and makes each VM's
# files; with `vmUser` set, the CH processes run as that unprivileged user.
# KillMode=process and a persistent run directory let CH processes and their
# API sockets outlive a worker restart: the restarted worker adopts the
# running VMs instead of rebooting them. With `procurator.host` enabled
# (modules/host.nix) each VM gets a TAP on the host's VM bridge.
import ./service-module.nix "worker" ({ config, lib, pkgs, common, cfg, ... }:
let
  host = config.procurator.host or { enable = false; };
  runDir = "/var/lib/procurator-worker";
in
{
  binary = "worker";
  defaultListen = "127.0.0.1:6000";
  options = {
    workerId = common.nullableStrOption {
      description = "Id the worker registers with. null: the machine's hostname at run time.";
    };
    advertise = common.nullableStrOption {
      example = "10.0.0.5:6000";
      description = "Address reported to the control plane and clients (null: the bound address).";
    };
    controlPlane = common.nullableStrOption {
      example = "10.0.0.2:7000";
      description = "Control plane address, passed as --control-plane (null: the flag is left out).";
    };
    cacheUrl = common.nullableStrOption {
      description = "Binary cache closures are pulled from (--closure-source; null: they must already be local).";
    };
    cachePublicKey = common.nullableStrOption {
      example = "cache.example.org-1:AbC...=";
      description = "The cache's public key (name:base64); pulled paths must carry its signature.";
    };
    metricsListen = common.nullableStrOption {
      example = "127.0.0.1:9465";
      description = "Serve Prometheus metrics (GET /metrics, no token) on this address (--metrics-listen). null: off. Keep it on loopback or a monitoring network.";
    };
    cpu = common.option (lib.types.nullOr lib.types.ints.positive) null "vCPUs offered to VMs (null: the host's CPU count).";
    memoryMb = common.option (lib.types.nullOr lib.types.ints.positive) null "Memory in MiB offered to VMs (null: the host's MemTotal).";
    labels = common.option (lib.types.attrsOf lib.types.str) { } "Worker labels for placement (key=value).";
    tokenFile = common.credentialOption "Token file of the worker's own RPC (`admin <token>`, `reader <token>` lines; a systemd credential). null: the one generated in ${common.secretsDir} (worker-tokens: the host's admin token).";
    clusterTokenFile = common.credentialOption "File holding this worker's `worker:<id>` token for the control plane (a systemd credential). null: the one generated in ${common.secretsDir} (worker-token, which the generated control-plane token file names with this worker's id).";
    vmUser = common.nullableStrOption {
      example = "procurator-vm";
      description = "Unprivileged user each Cloud Hypervisor process runs as (--vm-user; its group: kvm if the host has it). The user must exist, e.g. users.users.procurator-vm = { isSystemUser = true; group = \"kvm\"; }. null: CH runs as root, as the worker.";
    };
    cloudHypervisor = lib.mkOption {
      type = lib.types.package;
      default = pkgs.cloud-hypervisor;
      defaultText = lib.literalExpression "pkgs.cloud-hypervisor";
      description = "Cloud Hypervisor package.";
    };
  };
  extraConfig = {
    boot.kernelModules = [ "tun" ];
  };
  service = {
    settings = {
      listen = cfg.listen;
      advertise = cfg.advertise;
      log-json = cfg.logJson;
      worker-id = cfg.workerId;
      control-plane = cfg.controlPlane;
      closure-source = cfg.cacheUrl;
      cache-public-key = cfg.cachePublicKey;
      ch-binary = "${cfg.cloudHypervisor}/bin/cloud-hypervisor";
      # Sockets, records, serial logs and per-VM disk copies: on disk,
      # not tmpfs, and kept across restarts for adoption.
      run-dir = runDir;
      cpu = cfg.cpu;
      memory-mb = cfg.memoryMb;
      metrics-listen = cfg.metricsListen;
      label = lib.mapAttrsToList (k: v: "${k}=${v}") cfg.labels;
      # With the host network, the worker networks each VM and owns its
      # egress rules (modules/host.nix keeps only the host-wide parts).
      bridge = if host.enable then host.bridge else null;
      vm-subnet = if host.enable then host.subnet else null;
      tap-prefix = if host.enable then host.tapPrefix else null;
      vm-user = cfg.vmUser;
      dns-upstream = if host.enable then host.upstreamDns else null;
    };
    credentials = [
      { flag = "token-file"; name = "tokens"; file = common.orGenerated cfg.tokenFile "worker-tokens"; }
      { flag = "cluster-token-file"; name = "cluster-token"; file = common.orGenerated cfg.clusterTokenFile "worker-token"; }
    ];
    environment = {
      XDG_CACHE_HOME = "/var/cache/procurator-worker";
    };
    # Store writes (closures pulled from the cache) go through the daemon.
    nixDaemon = true;
    unit = {
      description = "Procurator worker (Cloud Hypervisor VMs)";
      path = [ config.nix.package pkgs.iproute2 pkgs.nftables ];
      # Only part of `hardening`: the worker runs as root with KVM and TAP
      # access (devices, privileges, netlink); the rest of the system stays
      # read-only.
      serviceConfig = {
        inherit (common.hardening)
          NoNewPrivileges PrivateTmp ProtectHome ProtectKernelModules ProtectKernelLogs
          ProtectControlGroups ProtectClock LockPersonality SystemCallArchitectures
          ProtectKernelTunables ProtectHostname RestrictRealtime RestrictSUIDSGID RemoveIPC
          SystemCallErrorNumber UMask;
        # Root, but only these capabilities (CH processes inherit at most
        # them): NET_ADMIN creates TAP devices and nftables rules; SETUID,
        # SETGID, CHOWN, FOWNER and DAC_OVERRIDE start CH as the VM user and
        # hand it (and take back) its sockets, disks and logs; KILL signals
        # CH processes running as that user. No SYS_ADMIN, SYS_MODULE,
        # SYS_PTRACE, SYS_RAWIO or SYS_RESOURCE.
        CapabilityBoundingSet = [
          "CAP_NET_ADMIN" "CAP_SETUID" "CAP_SETGID" "CAP_CHOWN" "CAP_FOWNER"
          "CAP_DAC_OVERRIDE" "CAP_KILL"
        ];
        # A deny list rather than @system-service: CH needs KVM's ioctls,
        # its own seccomp filter, CPU affinity and NUMA calls (@resources),
        # which an allow list would cut. What no VMM or worker needs goes.
        SystemCallFilter = [
          "~@clock" "~@cpu-emulation" "~@debug" "~@module" "~@mount" "~@obsolete"
          "~@raw-io" "~@reboot" "~@swap"
        ];
        # VMs outlive worker restarts (adoption, design §1).
        KillMode = "process";
        StateDirectory = "procurator-worker";
        # The VM user passes through to its own vm/ and console files.
        StateDirectoryMode = if cfg.vmUser == null then "0700" else "0711";
        CacheDirectory = "procurator-worker";
        ProtectSystem = "full";
        DeviceAllow = [ "/dev/kvm rw" "/dev/net/tun rw" "/dev/vhost-net rw" ];
        DevicePolicy = "closed";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
        LimitNOFILE = 65536;
      };
    };
  };
})
