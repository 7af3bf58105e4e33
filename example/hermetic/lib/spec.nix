# mkVmSpec: builds the VmSpec attrset, the one contract with the Rust side
# (commands/schema/common.capnp `VmSpec`, camelCase JSON), and mkClosure:
# one derivation whose runtime closure holds every store path of some specs.
#
# Builtins only (no nixpkgs): evaluated by the tests here and copied byte for
# byte into example/hermetic/lib.
let
  inherit (builtins)
    all attrNames attrValues concatLists concatStringsSep filter hashString head
    isAttrs isInt isList isString length match sort toJSON typeOf
    unsafeDiscardStringContext;

  fail = msg: throw "procurator: mkVmSpec: ${msg}";

  show = v:
    if isString v || isInt v || v == null then toJSON v else "a ${typeOf v}";

  isDnsLabel = s: isString s && match "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" s != null;

  # "/nix/store/<32 nix32 chars>-<name>" optionally followed by a path
  # inside it, without empty, "." or ".." components (the Rust StorePath rule).
  isStorePath = p:
    isString p
    && match "${builtins.storeDir}/[0123456789abcdfghijklmnpqrsvwxyz]{32}-[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]*(/[^/]+)*" p != null
    && match ".*/\\.\\.?(/.*)?" p == null;

  isLabelKey = k: match "[a-zA-Z0-9]([a-zA-Z0-9._/-]{0,61}[a-zA-Z0-9])?" k != null;
  isLabelValue = v: isString v && match "([a-zA-Z0-9]([a-zA-Z0-9._-]{0,61}[a-zA-Z0-9])?)?" v != null;

  # The exact field list of the Cap'n Proto VmSpec, in schema order.
  fields = [
    "name" "toplevel" "kernelPath" "initrdPath" "diskImagePath" "cmdline"
    "cpu" "memoryMb" "networkAllowedDomains" "contentHash" "labels"
  ];

  # What boots: every field except the name, the labels and the hash itself.
  # A label change is placement, not boot content, so it keeps the hash.
  bootFields = [
    "toplevel" "kernelPath" "initrdPath" "diskImagePath" "cmdline" "cpu"
    "memoryMb" "networkAllowedDomains"
  ];

  # sha256 (hex) over a canonical rendering of the boot fields. toJSON sorts
  # attribute names, so the string depends on the values only. The context
  # is dropped first: the hash is a plain value, not a reference.
  contentHashOf = spec:
    hashString "sha256" ("procurator-vmspec-v1\n" + unsafeDiscardStringContext
      (toJSON (builtins.listToAttrs (map (f: { name = f; value = spec.${f}; }) bootFields))));

  mkVmSpec =
    { name
    , toplevel
    , kernelPath
    , initrdPath ? ""
    , diskImagePath ? ""
    , cmdline ? ""
    , cpu
    , memoryMb
    , networkAllowedDomains ? [ ]
    , labels ? { }
    }:
    let
      where = "VM ${show name}";
      badLabel = filter (k: !(isLabelKey k) || !(isLabelValue labels.${k})) (attrNames labels);
      spec = {
        inherit name toplevel kernelPath initrdPath diskImagePath cmdline cpu
          memoryMb labels;
        networkAllowedDomains = sort (a: b: a < b) networkAllowedDomains;
      };
    in
    if !(isDnsLabel name) then
      fail "name must be a DNS label ([a-z0-9-], at most 63 characters, no leading or trailing dash), got ${show name}"
    else if !(isStorePath toplevel) then
      fail "${where}: toplevel must be a store path, got ${show toplevel}"
    else if !(isStorePath kernelPath) then
      fail "${where}: kernelPath must be a store path, got ${show kernelPath}"
    else if initrdPath != "" && !(isStorePath initrdPath) then
      fail "${where}: initrdPath must be a store path or \"\", got ${show initrdPath}"
    else if diskImagePath != "" && !(isStorePath diskImagePath) then
      fail "${where}: diskImagePath must be a store path or \"\", got ${show diskImagePath}"
    else if !(isString cmdline) || builtins.stringLength cmdline > 4096 then
      fail "${where}: cmdline must be a string of at most 4096 bytes"
    else if !(isInt cpu) || cpu < 1 || cpu > 256 then
      fail "${where}: cpu must be an integer between 1 and 256, got ${show cpu}"
    else if !(isInt memoryMb) || memoryMb < 1 || memoryMb > 4194304 then
      fail "${where}: memoryMb must be an integer between 1 and 4194304, got ${show memoryMb}"
    else if !(isList networkAllowedDomains) || !(all isString networkAllowedDomains) then
      fail "${where}: networkAllowedDomains must be a list of strings"
    else if length networkAllowedDomains > 256 then
      fail "${where}: networkAllowedDomains has more than 256 entries"
    else if !(isAttrs labels) then
      fail "${where}: labels must be an attribute set of strings, got ${show labels}"
    else if length (attrNames labels) > 64 then
      fail "${where}: labels has more than 64 entries"
    else if badLabel != [ ] then
      fail "${where}: label ${show (head badLabel)} = ${show labels.${head badLabel}} is not a valid label (key and value: letters, digits, '.', '_', '-', at most 63 characters)"
    else
      spec // { contentHash = contentHashOf spec; };

  # The store paths a spec references ("" means none).
  specPaths = spec:
    filter (p: p != "") [ spec.toplevel spec.kernelPath spec.initrdPath spec.diskImagePath ];

  # One derivation whose output lists every store path of `specs`. The paths
  # keep their string context, so they are inputs of the build, and the
  # builder writes them into $out, so Nix's reference scan records them as
  # runtime references: `nix copy` of this one path carries every VM.
  # Builtins only: the builder is /bin/sh with no PATH (echo is a builtin).
  mkClosure = { system, specs, name ? "procurator-closure" }:
    let
      # Unique and sorted; the values keep their context (only the names,
      # used for deduplication, drop it).
      paths = attrValues (builtins.listToAttrs (map
        (p: { name = unsafeDiscardStringContext p; value = p; })
        (concatLists (map specPaths specs))));
    in
    derivation {
      inherit name system;
      builder = "/bin/sh";
      args = [ "-c" ''
        : > "$out"
        for p in $paths; do echo "$p" >> "$out"; done
      '' ];
      paths = concatStringsSep " " paths;
    };
in
{
  inherit mkVmSpec mkClosure contentHashOf fields bootFields isStorePath;
}
