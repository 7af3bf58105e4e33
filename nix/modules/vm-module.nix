# The guest NixOS module: what every Procurator VM is. Direct kernel boot by
# Cloud Hypervisor (no bootloader), virtio devices, serial console on ttyS0,
# DHCP from the host's dnsmasq, SSH with the profile's keys, the profile's
# files, and the workload entrypoint as a systemd service that can power the
# VM off when it ends (CH then exits, which the worker observes).
#
# `procurator.guest.profile` takes a profile normalised by mkVmProfile
# (nix/lib/profile.nix); nix/lib/image.nix sets it.
{ config, lib, pkgs, modulesPath, ... }:
let
  cfg = config.procurator.guest;
  p = cfg.profile;

  # One store file per declared file; installed at boot by procurator-files.
  fileSource = path: f:
    if f.source != null then f.source
    else pkgs.writeText "procurator-file-${baseNameOf path}" f.text;

  installFiles = lib.concatStringsSep "\n" (lib.mapAttrsToList
    (path: f: ''
      install -D -m ${lib.escapeShellArg f.mode} -o ${lib.escapeShellArg f.user} \
        -g ${lib.escapeShellArg f.group} ${fileSource path f} ${lib.escapeShellArg path}
    '')
    p.files);
in
{
  options.procurator.guest = {
    profile = lib.mkOption {
      type = lib.types.attrs;
      description = "The VM profile, as returned by mkVmProfile (nix/lib/profile.nix).";
    };
    diskAdditionalSpace = lib.mkOption {
      type = lib.types.str;
      default = "1024M";
      description = "Free space added to the root disk image beyond the system closure.";
    };
  };

  config = {
    assertions = [{
      assertion = (p._type or null) == "procurator-vm-profile";
      message = "procurator.guest.profile must come from mkVmProfile";
    }];

    # Direct kernel boot: CH loads kernel and initrd itself.
    boot.loader.grub.enable = false;
    boot.initrd.availableKernelModules = [
      "virtio_pci" "virtio_mmio" "virtio_blk" "virtio_net" "virtio_scsi"
    ];
    boot.initrd.kernelModules = [ "virtio_balloon" "virtio_console" "virtio_rng" ];
    # Serial console (CH's serial goes to a file the worker tails); reboot=t
    # and panic=-1 make a crash or reboot end the CH process promptly.
    # systemd's getty generator starts a login on the console= device.
    boot.kernelParams = [ "console=ttyS0" "reboot=t" "panic=-1" ];

    fileSystems."/" = {
      device = "/dev/disk/by-label/nixos";
      fsType = "ext4";
      autoResize = true;
    };
    boot.growPartition = false;

    # Hostname: pinned by the profile, or taken at boot from the kernel
    # command line (systemd.hostname=<vm name>) so replicas share one image.
    networking.hostName = if p.hostname != null then p.hostname else "";
    networking.useNetworkd = true;
    networking.useDHCP = true;
    # Egress is filtered on the host (modules/host.nix); the guest firewall
    # only guards its own ports.
    networking.firewall.enable = true;
    networking.firewall.allowedTCPPorts = lib.optional (p.sshKeys != [ ]) 22;

    services.openssh = lib.mkIf (p.sshKeys != [ ]) {
      enable = true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "prohibit-password";
      };
    };
    users.users.root.openssh.authorizedKeys.keys = p.sshKeys;

    environment.systemPackages = p.packages;

    systemd.services.procurator-files = lib.mkIf (p.files != { }) {
      description = "Install the files of the Procurator VM profile";
      wantedBy = [ "multi-user.target" ];
      before = [ "procurator-workload.service" ];
      path = [ pkgs.coreutils ];
      script = installFiles;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
    };

    systemd.services.procurator-workload = lib.mkIf (p.entrypoint != null) {
      description = "Procurator VM workload";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ] ++ lib.optional (p.files != { }) "procurator-files.service";
      requires = lib.optional (p.files != { }) "procurator-files.service";
      path = p.packages ++ [ pkgs.bash pkgs.coreutils ];
      script = p.entrypoint;
      serviceConfig = {
        Type = "exec";
        # The workload's output also goes to the serial console, which is
        # what `pcr` shows as the VM's log.
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        Restart = if p.powerOffOnExit then "no" else "on-failure";
        RestartSec = 2;
      };
      # The VM's job is the workload: when it ends, the VM ends.
      unitConfig = lib.mkIf p.powerOffOnExit {
        SuccessAction = "poweroff";
        FailureAction = "poweroff";
      };
    };

    # Small, quick-to-build guests.
    documentation.enable = false;
    documentation.man.enable = false;
    services.udisks2.enable = false;
    security.polkit.enable = lib.mkDefault false;
    nix.enable = lib.mkDefault false;
    system.stateVersion = lib.mkDefault "24.11";

    # The root disk: ext4 labelled "nixos", no partition table (CH attaches
    # it as /dev/vda), no bootloader, no channel.
    system.build.procuratorDiskImage = import (modulesPath + "/../lib/make-disk-image.nix") {
      inherit lib config pkgs;
      format = "raw";
      partitionTableType = "none";
      label = "nixos";
      diskSize = "auto";
      additionalSpace = cfg.diskAdditionalSpace;
      installBootLoader = false;
      copyChannel = false;
    };
  };
}
