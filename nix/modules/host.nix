# The Procurator host NixOS module: the network a worker's VMs live on.
#
#   - a bridge with the host's address on the VM subnet (a /24);
#   - TAP devices: the worker (--tap-prefix, set by modules/worker.nix) has
#     Cloud Hypervisor create one TAP per VM named <prefix><VM id tail>; a
#     udev rule attaches every TAP with the prefix to the bridge;
#   - NAT from the bridge to the uplink;
#   - dnsmasq on the bridge: DHCP (a fixed address per declared VM, matched
#     by the hostname the guest sends, i.e. its VM name; a pool for others)
#     and DNS;
#   - per-VM egress allowlist by domain: dnsmasq puts the addresses it
#     resolves for an allowed domain into that VM's nftables set, and the
#     forward chain lets a VM reach only addresses in its set (plus the
#     host's DNS). VMs with no allowed domains, and VMs not declared in
#     `vms`, have no egress at all;
#   - the bridge drops frames from VM TAPs with sources outside the subnet
#     and all IPv6.
#
# Allowlist entries follow dnsmasq's domain matching: "example.com" also
# allows its subdomains; "*.example.com" is accepted and means the same.
# Addresses stay in a VM's set until nftables is reloaded (dnsmasq restarts
# with it and refills the sets on the next lookups).
#
# Identity is the address: a guest with root that sets another declared
# VM's address by hand gets that VM's allowlist (and an address conflict).
# Stronger binding needs per-VM MAC/address pairs from the worker.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  inherit (import ./service-common.nix { inherit lib; }) option;
  cfg = config.procurator.host;

  # Addresses, dnsmasq lines and nftables rules are computed by the
  # builtins-only nix/lib/network.nix (tested without nixpkgs).
  net = (import ../lib/network.nix).hostNetwork {
    inherit (cfg) bridge tapPrefix subnetPrefix;
    vms = lib.mapAttrs (_: vm: { inherit (vm) index allowedDomains; }) cfg.vms;
  };

  vmModule = {
    options = {
      index = mkOption {
        type = types.ints.between 0 89;
        description = "Address slot of the VM: it gets .<index+10> of the subnet. Unique per host.";
      };
      allowedDomains = option (types.listOf types.str) [ ] "Domains the VM may reach (its vmSpec's networkAllowedDomains); subdomains included. Empty: no egress.";
    };
  };

  ip = "${pkgs.iproute2}/bin/ip";
in
{
  options.procurator.host = {
    enable = mkEnableOption "the Procurator VM network on this host (bridge, TAPs, NAT, DHCP/DNS, egress allowlists)";

    bridge = option types.str "pcrbr0" "Name of the bridge the VMs' TAP devices join.";

    tapPrefix = option types.str "pcrt" "Prefix of the TAP devices the worker creates per VM (worker --tap-prefix); they join the bridge.";

    subnetPrefix = option types.str "10.100.0" "First three octets of the VM /24: the host is .1, declared VM slot i is .(10+i), others .100-.249.";

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

    vms = mkOption {
      type = types.attrsOf (types.submodule vmModule);
      default = { };
      example = lib.literalExpression ''
        { web-0 = { index = 0; allowedDomains = [ "example.com" ]; }; }
        # or, from a cluster: procurator.lib.vmsFromSpecs cluster.vmSpecs
      '';
      description = "VMs with a fixed address and an egress allowlist, by VM name.";
    };

    network = mkOption {
      type = types.attrs;
      readOnly = true;
      description = "The computed network (hostNetwork's result), for other modules.";
    };
  };

  config = mkIf cfg.enable {
    procurator.host.network = net;

    assertions = [{
      assertion = config.networking.nftables.enable;
      message = "procurator.host needs networking.nftables.enable (the egress allowlist is nftables)";
    }];

    networking.nftables.enable = lib.mkDefault true;

    networking.bridges.${cfg.bridge}.interfaces = [ ];
    networking.interfaces.${cfg.bridge}.ipv4.addresses = [{ address = net.hostAddress; prefixLength = 24; }];
    boot.kernelModules = [ "tun" "bridge" ];

    # TAPs appear when the worker starts a VM: put them on the bridge.
    services.udev.extraRules = ''
      ACTION=="add", SUBSYSTEM=="net", KERNEL=="${cfg.tapPrefix}*", RUN+="${ip} link set dev %k master ${cfg.bridge}", RUN+="${ip} link set dev %k up"
    '';

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
        dhcp-range = net.dhcpRanges;
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
      # no rule accepts is dropped.
      procurator = {
        family = "inet";
        content = net.inetTable;
      };
      # VM TAPs may only send from the VM subnet, IPv4 only.
      procurator_antispoof = {
        family = "bridge";
        content = net.bridgeTable;
      };
    };

    environment.etc."procurator/host-network.json".text = net.json;
  };
}
