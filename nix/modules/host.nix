# The Procurator host NixOS module: the network a worker's VMs live on.
#
#   - a bridge with the host's address on the VM subnet (a /24);
#   - one persistent TAP per declared VM, attached to the bridge (the worker
#     hands the TAP to Cloud Hypervisor; /etc/procurator/host-network.json
#     maps VM names to TAP, MAC and address);
#   - NAT from the bridge to the uplink;
#   - dnsmasq on the bridge: static DHCP leases (MAC -> address) and DNS;
#   - per-VM egress allowlist by domain: dnsmasq puts the addresses it
#     resolves for an allowed domain into that VM's nftables set, and the
#     forward chain lets a VM reach only addresses in its set (plus the host's
#     DNS). A VM with no allowed domains has no egress at all.
#   - anti-spoofing on the bridge ports, so a VM cannot borrow another VM's
#     address (and its allowlist).
#
# Allowlist entries follow dnsmasq's domain matching: "example.com" also
# allows its subdomains; "*.example.com" is accepted and means the same.
# Only IPv4 is forwarded; IPv6 from the VM network is dropped. Addresses stay
# in a VM's set until nftables is reloaded (dnsmasq restarts with it).
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.procurator.host;

  # Names, addresses, dnsmasq lines and nftables rules are computed by the
  # builtins-only nix/lib/network.nix (tested without nixpkgs).
  net = (import ../lib/network.nix).hostNetwork {
    inherit (cfg) bridge subnetPrefix;
    vms = lib.mapAttrs (_: vm: { inherit (vm) index allowedDomains; }) cfg.vms;
  };

  vmModule = {
    options = {
      index = mkOption {
        type = types.ints.between 0 239;
        description = "Slot of the VM on this host: fixes its TAP (pcrtap<index>), MAC and address (.<index+10>). Unique per host.";
      };
      allowedDomains = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Domains the VM may reach (its vmSpec's networkAllowedDomains); subdomains included. Empty: no egress.";
      };
    };
  };
in
{
  options.procurator.host = {
    enable = mkEnableOption "the Procurator VM network on this host (bridge, TAPs, NAT, DHCP/DNS, egress allowlists)";

    bridge = mkOption {
      type = types.str;
      default = "pcrbr0";
      description = "Name of the bridge the VMs' TAP devices join.";
    };

    subnetPrefix = mkOption {
      type = types.str;
      default = "10.100.0";
      description = "First three octets of the VM /24: the host is .1, VM slot i is .(10+i).";
    };

    externalInterface = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "eth0";
      description = "Uplink the VMs' traffic is NATed to. null: no NAT (VMs reach only the host).";
    };

    upstreamDns = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "1.1.1.1" ];
      description = "DNS servers dnsmasq forwards to. Empty: the host's /etc/resolv.conf.";
    };

    tapOwner = mkOption {
      type = types.str;
      default = "root";
      description = "User that may open the TAP devices (the user the worker runs Cloud Hypervisor as).";
    };

    vms = mkOption {
      type = types.attrsOf (types.submodule vmModule);
      default = { };
      example = lib.literalExpression ''
        { web-0 = { index = 0; allowedDomains = [ "example.com" ]; }; }
        # or, from a cluster: (import nix/lib/network.nix).vmsFromSpecs cluster.vmSpecs
      '';
      description = "VMs this host can run, by VM name: network slot and egress allowlist.";
    };

    network = mkOption {
      type = types.attrs;
      readOnly = true;
      description = "The computed network (hostNetwork's result): per-VM tap, mac, address; for other modules.";
    };
  };

  config = mkIf cfg.enable {
    procurator.host.network = net;

    assertions = [{
      assertion = config.networking.nftables.enable;
      message = "procurator.host needs networking.nftables.enable (the egress allowlist is nftables)";
    }];

    networking.nftables.enable = lib.mkDefault true;

    networking.bridges.${cfg.bridge}.interfaces = net.taps;
    networking.interfaces = {
      ${cfg.bridge}.ipv4.addresses = [{ address = net.hostAddress; prefixLength = 24; }];
    } // lib.listToAttrs (map
      (tap: lib.nameValuePair tap {
        virtual = true;
        virtualType = "tap";
        virtualOwner = cfg.tapOwner;
      })
      net.taps);

    networking.nat = mkIf (cfg.externalInterface != null) {
      enable = true;
      internalInterfaces = [ cfg.bridge ];
      externalInterface = cfg.externalInterface;
    };
    boot.kernel.sysctl."net.ipv4.ip_forward" = 1;

    # DHCP and DNS for the VMs, nothing else on the host.
    networking.firewall.interfaces.${cfg.bridge} = {
      allowedUDPPorts = [ 53 67 ];
      allowedTCPPorts = [ 53 ];
    };

    services.dnsmasq = {
      enable = true;
      # The host keeps its own resolver; dnsmasq serves the VM bridge only.
      resolveLocalQueries = false;
      settings = {
        interface = cfg.bridge;
        # bind-dynamic: start even before the bridge has come up.
        bind-dynamic = true;
        domain-needed = true;
        bogus-priv = true;
        dhcp-range = [ "${cfg.subnetPrefix}.0,static,255.255.255.0,12h" ];
        dhcp-host = net.dhcpHosts;
        dhcp-option = [ "option:router,${net.hostAddress}" "option:dns-server,${net.hostAddress}" ];
        nftset = net.nftsets;
      } // lib.optionalAttrs (cfg.upstreamDns != [ ]) {
        no-resolv = true;
        server = cfg.upstreamDns;
      };
    };
    # The sets dnsmasq fills live in the nftables ruleset, so dnsmasq starts
    # after it, and restarts with it: a reload empties the sets, and a fresh
    # dnsmasq (empty cache) refills them on the VMs' next lookups.
    systemd.services.dnsmasq = {
      after = [ "nftables.service" ];
      wants = [ "nftables.service" ];
      partOf = [ "nftables.service" ];
    };

    networking.nftables.tables = {
      # Egress allowlist; runs before NAT. Anything from the VM network that
      # no rule accepts is dropped, including IPv6 and spoofed addresses.
      procurator = {
        family = "inet";
        content = net.inetTable;
      };
      # A VM may only send from its own MAC and address.
      procurator_antispoof = {
        family = "bridge";
        content = net.bridgeTable;
      };
    };

    environment.etc."procurator/host-network.json".text = net.json;
  };
}
