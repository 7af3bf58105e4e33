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
# Only IPv4 is forwarded; IPv6 from the VM network is dropped.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption mkEnableOption mkIf types;
  cfg = config.procurator.host;

  hex2 = n: lib.fixedWidthString 2 "0" (lib.toLower (lib.toHexString n));
  hostAddress = "${cfg.subnetPrefix}.1";

  vmModule = { name, config, ... }: {
    options = {
      index = mkOption {
        type = types.ints.between 0 239;
        description = "Slot of the VM on this host: fixes its TAP name, MAC and address. Unique per host.";
      };
      allowedDomains = mkOption {
        type = types.listOf (types.strMatching "(\\*\\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*");
        default = [ ];
        description = "Domains the VM may reach (the vmSpec's networkAllowedDomains). Empty: no egress.";
      };
      tap = mkOption {
        type = types.str;
        default = "pcrtap${toString config.index}";
        readOnly = true;
        description = "TAP device of the VM.";
      };
      mac = mkOption {
        type = types.str;
        # 02: locally administered; 50:43:52 is "PCR".
        default = "02:50:43:52:${hex2 (config.index / 256)}:${hex2 (lib.mod config.index 256)}";
        description = "MAC address the VM's virtio-net device must use (its DHCP lease is bound to it).";
      };
      address = mkOption {
        type = types.str;
        default = "${cfg.subnetPrefix}.${toString (config.index + 10)}";
        readOnly = true;
        description = "IPv4 address the VM gets by DHCP.";
      };
      setName = mkOption {
        type = types.str;
        default = "allow_vm${toString config.index}";
        readOnly = true;
        internal = true;
      };
    };
  };

  vms = cfg.vms;
  vmList = lib.attrValues vms;

  # domain (without "*.") -> the sets of the VMs that allow it
  domainSets = lib.foldl'
    (acc: vm: lib.foldl'
      (acc': d:
        let dom = lib.removePrefix "*." d; in
        acc' // { ${dom} = (acc'.${dom} or [ ]) ++ [ vm.setName ]; })
      acc
      vm.allowedDomains)
    { }
    vmList;

  nftsetLines = lib.mapAttrsToList
    (dom: sets: "/${dom}/" + lib.concatMapStringsSep "," (s: "4#inet#procurator#${s}") (lib.unique sets))
    domainSets;

  forwardRules = lib.concatMapStringsSep "\n" (vm: ''
    iifname "${cfg.bridge}" ip saddr ${vm.address} ip daddr @${vm.setName} accept'') vmList;

  setDecls = lib.concatMapStringsSep "\n" (vm: ''
    set ${vm.setName} {
      type ipv4_addr
      comment "resolved addresses of ${lib.concatStringsSep " " vm.allowedDomains}"
    }'') vmList;

  antiSpoof = lib.concatMapStringsSep "\n" (vm: ''
    iifname "${vm.tap}" ether saddr != ${vm.mac} drop
    iifname "${vm.tap}" ether type ip ip saddr != { 0.0.0.0, ${vm.address} } drop
    iifname "${vm.tap}" ether type arp arp saddr ip != { 0.0.0.0, ${vm.address} } drop
    iifname "${vm.tap}" ether type ip6 drop'') vmList;

  hostNetworkJson = builtins.toJSON {
    inherit (cfg) bridge;
    inherit hostAddress;
    vms = lib.mapAttrs (_: vm: { inherit (vm) index tap mac address allowedDomains; }) vms;
  };
in
{
  options.procurator.host = {
    enable = mkEnableOption "the Procurator VM network on this host (bridge, TAPs, NAT, DHCP/DNS, egress allowlists)";

    bridge = mkOption {
      type = types.strMatching "[a-zA-Z0-9_-]{1,15}";
      default = "pcrbr0";
      description = "Name of the bridge the VMs' TAP devices join.";
    };

    subnetPrefix = mkOption {
      type = types.strMatching "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}";
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
      example = lib.literalExpression ''{ web-0 = { index = 0; allowedDomains = [ "example.com" ]; }; }'';
      description = "VMs this host can run, by VM name: network slot and egress allowlist.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.length (lib.unique (map (vm: vm.index) vmList)) == lib.length vmList;
        message = "procurator.host.vms: every VM needs its own index";
      }
      {
        assertion = config.networking.nftables.enable;
        message = "procurator.host needs networking.nftables.enable (the egress allowlist is nftables)";
      }
    ];

    networking.nftables.enable = lib.mkDefault true;

    networking.bridges.${cfg.bridge}.interfaces = map (vm: vm.tap) vmList;
    networking.interfaces = {
      ${cfg.bridge}.ipv4.addresses = [{ address = hostAddress; prefixLength = 24; }];
    } // lib.listToAttrs (map
      (vm: lib.nameValuePair vm.tap {
        virtual = true;
        virtualType = "tap";
        virtualOwner = cfg.tapOwner;
      })
      vmList);

    networking.nat = mkIf (cfg.externalInterface != null) {
      enable = true;
      internalInterfaces = [ cfg.bridge ];
      externalInterface = cfg.externalInterface;
    };
    boot.kernel.sysctl."net.ipv4.ip_forward" = 1;

    # DHCP and DNS for the VMs, nothing else.
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
        dhcp-host = lib.mapAttrsToList (name: vm: "${vm.mac},${vm.address},${name}") vms;
        dhcp-option = [ "option:router,${hostAddress}" "option:dns-server,${hostAddress}" ];
        nftset = nftsetLines;
      } // lib.optionalAttrs (cfg.upstreamDns != [ ]) {
        no-resolv = true;
        server = cfg.upstreamDns;
      };
    };
    systemd.services.dnsmasq = {
      after = [ "nftables.service" ];
      wants = [ "nftables.service" ];
    };

    networking.nftables.tables = {
      # Egress allowlist. Runs before NAT; any packet from the VM network that
      # no rule accepts is dropped, including IPv6 and other VMs' addresses.
      procurator = {
        family = "inet";
        content = ''
          ${setDecls}

          chain forward {
            type filter hook forward priority filter - 1; policy accept;
            ct state established,related accept
          ${forwardRules}
            iifname "${cfg.bridge}" counter drop
          }
        '';
      };
      # A VM may only send from its own MAC and address.
      procurator_antispoof = {
        family = "bridge";
        content = ''
          chain prerouting {
            type filter hook prerouting priority filter; policy accept;
          ${antiSpoof}
          }
        '';
      };
    };

    environment.etc."procurator/host-network.json".text = hostNetworkJson;
  };
}
