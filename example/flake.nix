# The reference Procurator cluster: a control-plane VM, two worker VMs and a
# Python workload VM, all NixOS guests built by the Procurator library
# (nix/lib), plus an example host configuration that runs them.
#
# Flake contract (context/architecture.md, "Flake contract"):
#   nix eval --json .#procurator.vmSpecs               the VmSpec list
#   nix build --json --no-link .#procurator.closure    every store path they boot
#
# Outside this repository, point the `procurator` input at
# "github:<owner>/procurator?dir=nix" instead of the relative path.
{
  description = "Procurator reference cluster";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";
    procurator = {
      url = "path:../nix";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, procurator }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};

      # Keys allowed to log in as root on every VM (replace with your own).
      sshKeys = [ ];

      # Extra NixOS modules per VM group, on top of the profile.
      groupModules = {
        control-plane = [
          procurator.nixosModules.control-plane
          {
            services.procurator.control-plane = {
              enable = true;
              listen = "0.0.0.0:7000";
              openFirewall = true;
            };
          }
        ];
        worker = [
          procurator.nixosModules.worker
          {
            services.procurator.worker = {
              enable = true;
              # Replicas share one image, so no id is pinned here: the worker
              # takes its hostname (the VM name, set at boot) as its id.
              # dnsmasq on the host resolves VM names (DHCP host names).
              controlPlane = "control-plane-0:7000";
              labels = { nested = "true"; };
              listen = "0.0.0.0:6000";
              openFirewall = true;
            };
            # Workers run nested VMs: /dev/kvm, nix to pull closures, room
            # for disk copies.
            boot.kernelModules = [ "kvm-intel" "kvm-amd" ];
            nix.enable = true;
            procurator.guest.diskAdditionalSpace = "4096M";
          }
        ];
        py = [ ];
      };

      cluster = procurator.lib.evalNixosCluster {
        inherit system;
        modules = group: groupModules.${group} or [ ];
        vms = {
          control-plane = {
            profile = {
              cpu = 2;
              memoryMb = 1024;
              inherit sshKeys;
            };
            labels = { role = "control"; };
          };
          worker = {
            replicas = 2;
            profile = {
              cpu = 2;
              memoryMb = 2048;
              inherit sshKeys;
            };
            labels = { role = "worker"; };
          };
          py = {
            profile = {
              cpu = 1;
              memoryMb = 512;
              packages = [ pkgs.python3 ];
              entrypoint = "exec python3 ${./app/main.py}";
              files."/etc/procurator/greeting" = "hello from the reference cluster";
              allowedDomains = [ "pypi.org" "files.pythonhosted.org" ];
              inherit sshKeys;
            };
            labels = { role = "app"; };
          };
        };
        limits = { cpu = 16; memoryMb = 16384; };
      };
    in
    {
      procurator = cluster.procurator;
      vmSpecsJson = cluster.vmSpecsJson;
      packages.${system}.default = cluster.closure;

      # A host that runs the VMs: the host module makes the bridge, forwarding
      # and NAT; the worker makes each VM's TAP, gives it a fixed address in
      # the subnet (derived from the VM's id) and installs its egress
      # allowlist as the VMs come and go. Adjust the control plane's address,
      # the uplink, file systems and boot loader.
      nixosConfigurations.host = nixpkgs.lib.nixosSystem {
        inherit system;
        modules = [
          procurator.nixosModules.host
          procurator.nixosModules.worker
          {
            procurator.host = {
              enable = true;
              externalInterface = "eth0";
            };
            services.procurator.worker = {
              enable = true;
              controlPlane = "10.100.0.10:7000";
            };
            networking.hostName = "host-a";
            fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };
            boot.loader.grub.device = "/dev/sda";
            system.stateVersion = "24.11";
          }
        ];
      };
    };
}
