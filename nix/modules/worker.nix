# NixOS module for the Procurator worker: one Cloud Hypervisor process per
# VM, reconciled to the control plane's assignment. It runs as root because
# it opens /dev/kvm and TAP devices and adds closures to the Nix store
# (`nix copy --from` the cache). KillMode=process and a preserved runtime
# directory let CH processes and their API sockets outlive a worker restart:
# the restarted worker adopts the running VMs instead of rebooting them.
# Usually enabled together with `procurator.host` (modules/host.nix), whose
# /etc/procurator/host-network.json tells the worker each VM's TAP and MAC.
{ config, lib, pkgs, ... }:
let
  common = import ./service-common.nix { inherit lib; };
  cfg = config.services.procurator.worker;
in
{
  options.services.procurator.worker = common.commonOptions {
    name = "worker";
    binary = "worker";
    defaultListen = "127.0.0.1:6000";
  } // {
    workerId = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = if config.networking.hostName != "" then config.networking.hostName else null;
      defaultText = lib.literalExpression "config.networking.hostName (null when empty)";
      description = "Id the worker registers with. null: the worker's own default (the machine's hostname at run time).";
    };
    controlPlane = lib.mkOption {
      type = lib.types.str;
      example = "10.0.0.2:7000";
      description = "Control plane address.";
    };
    cacheUrl = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Binary cache closures are pulled from (null: they must already be local).";
    };
    cpu = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      description = "vCPUs offered to VMs (null: the worker's default from the host).";
    };
    memoryMb = lib.mkOption {
      type = lib.types.nullOr lib.types.ints.positive;
      default = null;
      description = "Memory in MiB offered to VMs (null: the worker's default from the host).";
    };
    labels = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      description = "Worker labels for placement (key=value).";
    };
    cloudHypervisor = lib.mkOption {
      type = lib.types.package;
      default = pkgs.cloud-hypervisor;
      defaultText = lib.literalExpression "pkgs.cloud-hypervisor";
      description = "Cloud Hypervisor package.";
    };
  };

  config = lib.mkIf cfg.enable {
    boot.kernelModules = [ "tun" ];
    virtualisation.libvirtd.enable = lib.mkDefault false;

    systemd.services.procurator-worker = {
      description = "Procurator worker (Cloud Hypervisor VMs)";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" "nix-daemon.socket" ];
      wants = [ "network-online.target" ];
      path = [ cfg.cloudHypervisor config.nix.package pkgs.iproute2 ];
      environment = {
        RUST_LOG = cfg.logLevel;
        XDG_CACHE_HOME = "/var/cache/procurator-worker";
      } // cfg.environment;
      serviceConfig = {
        ExecStart = common.execStart cfg.package "worker"
          ({
            listen = cfg.listen;
            log-json = cfg.logJson;
            worker-id = cfg.workerId;
            control-plane = cfg.controlPlane;
            cache-url = cfg.cacheUrl;
            run-dir = "/run/procurator-worker";
            state-dir = "/var/lib/procurator-worker";
            cpu = cfg.cpu;
            memory-mb = cfg.memoryMb;
            label = lib.mapAttrsToList (k: v: "${k}=${v}") cfg.labels;
          } // cfg.settings)
          cfg.extraArgs;
        # VMs outlive worker restarts (adoption, design §1).
        KillMode = "process";
        RuntimeDirectory = "procurator-worker";
        RuntimeDirectoryPreserve = "yes";
        StateDirectory = "procurator-worker";
        CacheDirectory = "procurator-worker";
        Restart = "always";
        RestartSec = 1;
        # Root with KVM and TAP access; the rest of the system stays read-only.
        NoNewPrivileges = true;
        PrivateTmp = true;
        ProtectSystem = "full";
        ProtectHome = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        DeviceAllow = [ "/dev/kvm rw" "/dev/net/tun rw" "/dev/vhost-net rw" ];
        DevicePolicy = "closed";
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" "AF_NETLINK" ];
        LockPersonality = true;
        SystemCallArchitectures = "native";
        LimitNOFILE = 65536;
      };
    };
    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall (common.portOf cfg.listen);
  };
}
