# The Procurator host NixOS module: the host-wide part of the network a
# worker's VMs live on. Nothing here is per VM.
#
#   - a bridge with the host's address, the first of the VM subnet;
#   - IPv4 forwarding and NAT from the bridge to the uplink;
#   - the bridge may reach the host's port 53/udp: the worker's DNS
#     forwarder listens there.
#
# Everything per VM belongs to the worker (modules/worker.nix passes it
# --bridge, --vm-subnet, --tap-prefix and --dns-upstream from here): it
# makes each VM's TAP on the bridge, gives it a fixed address, and installs
# and removes its default-deny egress rules (nftables tables named
# `procurator`, inet and bridge) as VMs are created, changed by a new
# generation and deleted. So a push, not a host rebuild, changes what a VM
# may reach (design §12).
{ config, lib, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  inherit (import ./service-common.nix { inherit lib; }) option;
  cfg = config.procurator.host;

  # "a.b.c.d/len" → the bridge's address (the first host) and length.
  parts = builtins.match "([0-9]+)\\.([0-9]+)\\.([0-9]+)\\.([0-9]+)/([0-9]+)" cfg.subnet;
  octet = i: builtins.elemAt parts i;
  hostAddress =
    "${octet 0}.${octet 1}.${octet 2}.${toString (lib.toInt (octet 3) + 1)}";
  prefixLength = lib.toInt (octet 4);
in
{
  options.procurator.host = {
    enable = mkEnableOption "the Procurator VM network on this host (bridge, forwarding, NAT; the worker does the rest per VM)";

    bridge = option types.str "pcrbr0" "Name of the bridge the VMs' TAP devices join.";

    tapPrefix = option types.str "pcrt" "Prefix of the TAP devices the worker makes per VM (worker --tap-prefix); 1-8 of a-z, 0-9, not a prefix of the bridge's name.";

    subnet = option types.str "10.100.0.0/24" "The VM subnet (network address/length, 8-30). The bridge gets its first address; the worker gives VMs the others.";

    externalInterface = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "eth0";
      description = "Uplink the VMs' traffic is NATed to. null: no NAT (VMs reach only the host).";
    };

    upstreamDns = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "1.1.1.1:53";
      description = "Resolver (ip:port) the worker's DNS forwarder asks for the VMs' allowed names. null: the first nameserver of /etc/resolv.conf.";
    };

    hostAddress = mkOption {
      type = types.str;
      readOnly = true;
      default = hostAddress;
      description = "The bridge's address (the first host of `subnet`): the VMs' gateway and DNS server.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = parts != null && prefixLength >= 8 && prefixLength <= 30;
        message = "procurator.host.subnet must be a.b.c.d/len with len 8-30, got ${cfg.subnet}";
      }
      {
        assertion = builtins.match "[a-z0-9]{1,8}" cfg.tapPrefix != null
          && !(lib.hasPrefix cfg.tapPrefix cfg.bridge);
        message = "procurator.host.tapPrefix must be 1-8 of a-z, 0-9 and not begin the bridge's name";
      }
    ];

    # The worker's tables are nftables; the host's own firewall may be
    # either backend.
    networking.nftables.enable = lib.mkDefault true;

    networking.bridges.${cfg.bridge}.interfaces = [ ];
    networking.interfaces.${cfg.bridge}.ipv4.addresses = [{
      address = hostAddress;
      inherit prefixLength;
    }];
    boot.kernelModules = [ "tun" "bridge" ];
    boot.kernel.sysctl."net.ipv4.ip_forward" = 1;

    networking.nat = mkIf (cfg.externalInterface != null) {
      enable = true;
      internalInterfaces = [ cfg.bridge ];
      externalInterface = cfg.externalInterface;
    };

    # The worker's DNS forwarder, and nothing else of the host, for VMs.
    networking.firewall.interfaces.${cfg.bridge}.allowedUDPPorts = [ 53 ];
  };
}
