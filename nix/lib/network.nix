# hostNetwork: the host side of VM networking, computed from a table of VMs
# (name -> address slot and egress allowlist). Builtins only, so the tests
# check the generated dnsmasq lines and nftables rules without nixpkgs;
# nix/modules/host.nix turns the result into NixOS settings.
#
#   hostNetwork {
#     bridge = "pcrbr0";          # bridge the VMs' TAP devices join
#     tapPrefix = "pcrt";         # TAPs the worker has CH create: <prefix><VM id tail>
#     subnetPrefix = "10.100.0";  # the VM /24: host .1, slot i -> .(10+i),
#                                 # .100-.249 for VMs not declared here
#     vms.<name> = { index = 0..89; allowedDomains = [ "example.com" ]; };
#   }
#
# The worker names each VM's TAP and MAC after the VM's id (worker
# --tap-prefix), so TAPs come and go with VMs; the host attaches every TAP
# with the prefix to the bridge. A declared VM gets its fixed address by
# DHCP through its hostname (its VM name, set at boot), and its egress
# allowlist is keyed by that address: dnsmasq adds the IPv4 addresses it
# resolves for an allowed domain (and its subdomains: dnsmasq's /domain/
# matching; "*.d" means the same as "d") to the nftables set of every VM
# that allows it, and the forward chain accepts a VM's packets only to
# addresses in its set. Everything else from the bridge is dropped: VMs not
# declared here, IPv6, and sources outside the subnet (bridge table).
let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' genList head isAttrs isInt
    isList isString length listToAttrs map match substring toJSON typeOf
    elemAt sort;

  profileLib = import ./profile.nix;

  fail = msg: throw "procurator: hostNetwork: ${msg}";
  show = v: if isString v || isInt v || v == null then toJSON v else "a ${typeOf v}";

  isOctet = s: match "(0|[1-9][0-9]{0,2})" s != null && builtins.fromJSON s <= 255;

  unique = list: foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

  maxIndex = 89;

  checkVm = name: vm:
    let
      where = "vms.${name}";
      index = vm.index or null;
      domains = vm.allowedDomains or [ ];
      unknown = filter (k: !(elem k [ "index" "allowedDomains" ])) (attrNames vm);
      badDomain = filter (d: !(isString d) || !(profileLib.isDomain d)) domains;
    in
    if !(profileLib.isDnsLabel name) then fail "VM name ${show name} is not a DNS label"
    else if !(isAttrs vm) then fail "${where} must be an attribute set, got ${show vm}"
    else if unknown != [ ] then fail "${where} has unknown attribute ${show (head unknown)} (known: index, allowedDomains)"
    else if !(isInt index) || index < 0 || index > maxIndex then fail "${where}.index must be an integer between 0 and ${toString maxIndex}, got ${show index}"
    else if !(isList domains) then fail "${where}.allowedDomains must be a list, got ${show domains}"
    else if badDomain != [ ] then fail "${where}.allowedDomains: ${show (head badDomain)} is not a lowercase domain name"
    else {
      inherit index;
      allowedDomains = sort (a: b: a < b) (unique domains);
      setName = "allow_vm${toString index}";
    };

  hostNetwork = { bridge ? "pcrbr0", tapPrefix ? "pcrt", subnetPrefix ? "10.100.0", vms ? { } }:
    let
      octets = builtins.split "\\." subnetPrefix;
      prefixOk = isString subnetPrefix
        && match "[0-9]+\\.[0-9]+\\.[0-9]+" subnetPrefix != null
        && builtins.all isOctet (filter isString octets);
      names = attrNames vms;
      checked = builtins.mapAttrs checkVm vms;
      withAddress = builtins.mapAttrs (_: vm: vm // { address = "${subnetPrefix}.${toString (vm.index + 10)}"; }) checked;
      indexes = map (n: checked.${n}.index) names;
      dupIndex = filter (i: length (filter (j: j == i) indexes) > 1) indexes;
      vmList = map (n: withAddress.${n} // { name = n; }) names;
      hostAddress = "${subnetPrefix}.1";

      # domain (without "*.") -> sets of the VMs that allow it
      domainSets = foldl'
        (acc: vm: foldl'
          (acc': d:
            let dom = if match "\\*\\..*" d != null then substring 2 (builtins.stringLength d) d else d; in
            acc' // { ${dom} = unique ((acc'.${dom} or [ ]) ++ [ vm.setName ]); })
          acc
          vm.allowedDomains)
        { }
        vmList;

      nftsets = map
        (dom: "/${dom}/" + concatStringsSep "," (map (s: "4#inet#procurator#${s}") domainSets.${dom}))
        (attrNames domainSets);

      # Fixed addresses by the hostname the guest sends (its VM name).
      dhcpHosts = map (vm: "${vm.name},${vm.address}") vmList;
      dhcpRanges = [ "${subnetPrefix}.100,${subnetPrefix}.249,255.255.255.0,12h" ];

      inetTable = concatStringsSep "\n" (
        map (vm: "set ${vm.setName} {\n  type ipv4_addr\n}") vmList
        ++ [
          "chain forward {"
          "  type filter hook forward priority filter - 1; policy accept;"
          "  ct state established,related accept"
        ]
        ++ map (vm: "  iifname \"${bridge}\" ip saddr ${vm.address} ip daddr @${vm.setName} accept") vmList
        ++ [
          "  iifname \"${bridge}\" counter drop"
          "}"
        ]);

      bridgeTable = concatStringsSep "\n" [
        "chain prerouting {"
        "  type filter hook prerouting priority filter; policy accept;"
        "  iifname \"${tapPrefix}*\" ether type ip ip saddr != { 0.0.0.0, ${subnetPrefix}.0/24 } drop"
        "  iifname \"${tapPrefix}*\" ether type arp arp saddr ip != { 0.0.0.0, ${subnetPrefix}.0/24 } drop"
        "  iifname \"${tapPrefix}*\" ether type ip6 drop"
        "}"
      ];
    in
    if !(isString bridge) || match "[a-zA-Z0-9_-]{1,15}" bridge == null then
      fail "bridge must be an interface name (1-15 of a-z, A-Z, 0-9, '_', '-'), got ${show bridge}"
    else if !(isString tapPrefix) || match "[a-z][a-z0-9]{0,7}" tapPrefix == null then
      fail "tapPrefix must be 1-8 of a-z, 0-9 starting with a letter, got ${show tapPrefix}"
    else if substring 0 (builtins.stringLength tapPrefix) bridge == tapPrefix then
      fail "bridge ${show bridge} must not start with tapPrefix ${show tapPrefix} (it would be attached to itself)"
    else if !prefixOk then
      fail "subnetPrefix must be three octets like \"10.100.0\", got ${show subnetPrefix}"
    else if !(isAttrs vms) then
      fail "vms must be an attribute set of VMs, got ${show vms}"
    else if builtins.deepSeq checked dupIndex != [ ] then
      fail "index ${toString (head dupIndex)} is used by more than one VM (${concatStringsSep ", " (filter (n: checked.${n}.index == head dupIndex) names)})"
    else
      {
        inherit bridge tapPrefix subnetPrefix hostAddress dhcpHosts dhcpRanges nftsets inetTable bridgeTable;
        vms = withAddress;
        # A complete ruleset (what the host module installs), for `nft -c -f`.
        ruleset = "table inet procurator {\n${inetTable}\n}\ntable bridge procurator_antispoof {\n${bridgeTable}\n}\n";
        # What /etc/procurator/host-network.json holds for the worker.
        json = toJSON {
          inherit bridge tapPrefix hostAddress;
          vms = builtins.mapAttrs (_: vm: { inherit (vm) index address allowedDomains; }) withAddress;
        };
      };

  # One address slot per VmSpec, in the order given (evalCluster sorts by
  # name): slots stay put while VMs are only appended.
  vmsFromSpecs = specs:
    if length specs > maxIndex + 1 then
      fail "vmsFromSpecs: ${toString (length specs)} VMs, more than the ${toString (maxIndex + 1)} fixed addresses of a /24"
    else
      listToAttrs (genList
        (i: let s = elemAt specs i; in {
          inherit (s) name;
          value = { index = i; allowedDomains = s.networkAllowedDomains; };
        })
        (length specs));
in
{
  inherit hostNetwork vmsFromSpecs;
}
