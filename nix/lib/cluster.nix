# evalCluster: the cluster topology (named VM groups with a profile, a number
# of replicas and labels) evaluated to VmSpecs, plus the one derivation that
# carries all of them (the flake contract's `procurator` output).
#
# Builtins only (no nixpkgs): evaluated by the tests here and copied byte for
# byte into example/hermetic/lib. Building images is delegated to `mkImage`,
# so the same code serves real NixOS images and the hermetic example's fakes.
#
#   evalCluster {
#     system = "x86_64-linux";                # for the closure derivation
#     mkImage = { group, profile }: { toplevel; kernelPath; initrdPath;
#                                     diskImagePath; cmdline; };
#     vms.<group> = { profile = <mkVmProfile result or raw settings>;
#                     replicas = 1; labels = { }; };
#     limits = { maxVms = null; cpu = null; memoryMb = null; };  # optional
#   }
#
# Every replica of a group is named "<group>-<index>" (web-0, web-1, ...) and
# shares the group's image; the kernel command line carries its name
# (systemd.hostname=) unless the profile pins a hostname. A group name that
# passes the checks can never collide with another group's replica name: the
# part after the last '-' is the index.
let
  inherit (builtins)
    attrNames concatLists concatStringsSep elem filter foldl' genList head
    isAttrs isFunction isInt isString length listToAttrs sort stringLength
    toJSON typeOf;

  profileLib = import ./profile.nix;
  specLib = import ./spec.nix;

  fail = msg: throw "procurator: evalCluster: ${msg}";
  show = v: if isString v || isInt v || v == null then toJSON v else "a ${typeOf v}";

  groupKeys = [ "profile" "replicas" "labels" ];
  clusterKeys = [ "system" "mkImage" "vms" "limits" ];
  limitKeys = [ "maxVms" "cpu" "memoryMb" ];

  sum = foldl' (a: b: a + b) 0;

  evalGroup = mkImage: group: entry:
    let
      where = "vms.${group}";
      unknown = filter (k: !(elem k groupKeys)) (attrNames entry);
      replicas = entry.replicas or 1;
      labels = entry.labels or { };
      maxIndexLen = stringLength (toString (replicas - 1));
      badLabel = filter (v: !(isString labels.${v})) (attrNames labels);
    in
    if !(profileLib.isDnsLabel group) then
      fail "VM group name ${show group} is not a DNS label ([a-z0-9-], no leading or trailing dash)"
    else if !(isAttrs entry) then
      fail "${where} must be an attribute set, got ${show entry}"
    else if unknown != [ ] then
      fail "${where} has unknown attribute ${show (head unknown)} (known: ${concatStringsSep ", " groupKeys})"
    else if !(entry ? profile) then
      fail "${where} needs a profile"
    else if !(isInt replicas) || replicas < 0 || replicas > 1000 then
      fail "${where}.replicas must be an integer between 0 and 1000, got ${show replicas}"
    else if stringLength group + 1 + maxIndexLen > 63 then
      fail "${where}: replica names \"${group}-N\" would be longer than 63 characters"
    else if !(isAttrs labels) then
      fail "${where}.labels must be an attribute set, got ${show labels}"
    else if labels ? group then
      fail "${where}.labels: \"group\" is set by evalCluster to the group name"
    else if badLabel != [ ] then
      fail "${where}.labels.${head badLabel} must be a string, got ${show labels.${head badLabel}}"
    else
      let
        profile = profileLib.mkVmProfile entry.profile;
        image = mkImage { inherit group profile; };
        imageKeys = [ "toplevel" "kernelPath" "initrdPath" "diskImagePath" "cmdline" ];
        missing = filter (k: !(image ? ${k})) imageKeys;
        instance = index:
          let
            name = "${group}-${toString index}";
            words = filter (w: w != "")
              ([ image.cmdline ]
                ++ profile.kernelParams
                ++ (if profile.hostname == null then [ "systemd.hostname=${name}" ] else [ ]));
          in
          {
            inherit name group index profile image;
            spec = specLib.mkVmSpec {
              inherit name;
              inherit (image) toplevel kernelPath initrdPath diskImagePath;
              cmdline = concatStringsSep " " words;
              inherit (profile) cpu memoryMb;
              networkAllowedDomains = profile.allowedDomains;
              labels = labels // { inherit group; };
            };
          };
      in
      if !(isAttrs image) then
        fail "${where}: mkImage must return an attribute set, got ${show image}"
      else if missing != [ ] then
        fail "${where}: mkImage result lacks ${show (head missing)} (needs ${concatStringsSep ", " imageKeys})"
      else
        genList instance replicas;

  evalCluster = args:
    let
      unknown = filter (k: !(elem k clusterKeys)) (attrNames args);
      system = args.system or "x86_64-linux";
      vms = args.vms or { };
      limits = args.limits or { };
      unknownLimit = filter (k: !(elem k limitKeys)) (attrNames limits);
      mkImage = args.mkImage or (fail "needs mkImage (a function { group, profile } -> image paths)");

      instances = concatLists (map (g: evalGroup mkImage g vms.${g}) (attrNames vms));
      vmSpecs = sort (a: b: a.name < b.name) (map (i: i.spec) instances);
      totals = {
        vms = length vmSpecs;
        cpu = sum (map (s: s.cpu) vmSpecs);
        memoryMb = sum (map (s: s.memoryMb) vmSpecs);
      };
      over = filter
        (k: (limits.${k} or null) != null && totals.${if k == "maxVms" then "vms" else k} > limits.${k})
        limitKeys;
      closure = specLib.mkClosure { inherit system; specs = vmSpecs; };
    in
    if !(isAttrs args) then
      fail "arguments must be an attribute set, got ${show args}"
    else if unknown != [ ] then
      fail "unknown argument ${show (head unknown)} (known: ${concatStringsSep ", " clusterKeys})"
    else if !(isFunction mkImage) then
      fail "mkImage must be a function { group, profile } -> image paths, got ${show mkImage}"
    else if !(isAttrs vms) then
      fail "vms must be an attribute set of VM groups, got ${show vms}"
    else if !(isAttrs limits) then
      fail "limits must be an attribute set, got ${show limits}"
    else if unknownLimit != [ ] then
      fail "limits has unknown attribute ${show (head unknownLimit)} (known: ${concatStringsSep ", " limitKeys})"
    else if filter (k: limits.${k} != null && !(isInt limits.${k} && limits.${k} >= 0)) (attrNames limits) != [ ] then
      fail "limits must be non-negative integers or null"
    else if over != [ ] then
      let k = head over; in
      fail "the cluster needs ${toString totals.${if k == "maxVms" then "vms" else k}} ${if k == "maxVms" then "VMs" else k} but limits.${k} is ${toString limits.${k}}"
    else
      {
        inherit totals vmSpecs closure;
        vms = listToAttrs (map (i: { inherit (i) name; value = i; }) instances);
        vmSpecsJson = toJSON vmSpecs;
        # The flake contract (context/architecture.md, "Flake contract").
        procurator = { inherit vmSpecs closure; };
      };
in
{
  inherit evalCluster;
}
