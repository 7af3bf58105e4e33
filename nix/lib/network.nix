# hostNetwork: the host side of VM networking, computed from a table of VMs
# (name -> network slot and egress allowlist). Builtins only, so the tests
# check the generated dnsmasq lines and nftables rules without nixpkgs;
# nix/modules/host.nix turns the result into NixOS settings.
#
#   hostNetwork {
#     bridge = "pcrbr0";          # bridge the TAPs join
#     subnetPrefix = "10.100.0";  # the VM /24: host .1, slot i -> .(10+i)
#     vms.<name> = { index = 0..239; allowedDomains = [ "example.com" ]; };
#   }
#
# Each VM gets TAP "pcrtap<index>", MAC 02:50:43:52:<hi>:<lo> (02: locally
# administered, 50:43:52 = "PCR") and a static DHCP lease. Egress: dnsmasq
# adds the IPv4 addresses it resolves for an allowed domain (and its
# subdomains: dnsmasq's /domain/ matching; "*.d" means the same as "d") to
# the nftables set of every VM that allows it; the forward chain accepts a
# VM's packets only to addresses in its set, and drops everything else from
# the bridge (IPv6 included). The bridge table drops frames whose MAC or
# source address is not the VM's own, so a VM cannot use another's allowlist.
let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' genList head isAttrs isInt
    isList isString length listToAttrs map match substring toJSON typeOf
    elemAt sort;

  profileLib = import ./profile.nix;

  fail = msg: throw "procurator: hostNetwork: ${msg}";
  show = v: if isString v || isInt v || v == null then toJSON v else "a ${typeOf v}";

  hex2 = n: let d = "0123456789abcdef"; in substring (n / 16) 1 d + substring (n - (n / 16) * 16) 1 d;

  isOctet = s: match "(0|[1-9][0-9]{0,2})" s != null && builtins.fromJSON s <= 255;

  unique = list: foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

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
    else if !(isInt index) || index < 0 || index > 239 then fail "${where}.index must be an integer between 0 and 239, got ${show index}"
    else if !(isList domains) then fail "${where}.allowedDomains must be a list, got ${show domains}"
    else if badDomain != [ ] then fail "${where}.allowedDomains: ${show (head badDomain)} is not a lowercase domain name"
    else {
      inherit index;
      allowedDomains = sort (a: b: a < b) (unique domains);
      tap = "pcrtap${toString index}";
      mac = "02:50:43:52:00:${hex2 index}";
      setName = "allow_vm${toString index}";
    };

  hostNetwork = { bridge ? "pcrbr0", subnetPrefix ? "10.100.0", vms ? { } }:
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

      dhcpHosts = map (vm: "${vm.mac},${vm.address},${vm.name}") vmList;

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

      bridgeTable = concatStringsSep "\n" (
        [
          "chain prerouting {"
          "  type filter hook prerouting priority filter; policy accept;"
        ]
        ++ builtins.concatMap (vm: [
          "  iifname \"${vm.tap}\" ether saddr != ${vm.mac} drop"
          "  iifname \"${vm.tap}\" ether type ip ip saddr != { 0.0.0.0, ${vm.address} } drop"
          "  iifname \"${vm.tap}\" ether type arp arp saddr ip != { 0.0.0.0, ${vm.address} } drop"
          "  iifname \"${vm.tap}\" ether type ip6 drop"
        ]) vmList
        ++ [ "}" ]);
    in
    if !(isString bridge) || match "[a-zA-Z0-9_-]{1,15}" bridge == null then
      fail "bridge must be an interface name (1-15 of a-z, A-Z, 0-9, '_', '-'), got ${show bridge}"
    else if !prefixOk then
      fail "subnetPrefix must be three octets like \"10.100.0\", got ${show subnetPrefix}"
    else if !(isAttrs vms) then
      fail "vms must be an attribute set of VMs, got ${show vms}"
    else if builtins.deepSeq checked dupIndex != [ ] then
      fail "index ${toString (head dupIndex)} is used by more than one VM (${concatStringsSep ", " (filter (n: checked.${n}.index == head dupIndex) names)})"
    else
      {
        inherit bridge subnetPrefix hostAddress dhcpHosts nftsets inetTable bridgeTable;
        vms = withAddress;
        taps = map (vm: vm.tap) vmList;
        # A complete ruleset (what the host module installs), for `nft -c -f`.
        ruleset = "table inet procurator {\n${inetTable}\n}\ntable bridge procurator_antispoof {\n${bridgeTable}\n}\n";
        # What /etc/procurator/host-network.json holds for the worker.
        json = toJSON {
          inherit bridge hostAddress;
          vms = builtins.mapAttrs (_: vm: { inherit (vm) index tap mac address allowedDomains; }) withAddress;
        };
      };

  # One network slot per VmSpec, in the order given (evalCluster sorts by
  # name): slots stay put while VMs are only appended.
  vmsFromSpecs = specs:
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
