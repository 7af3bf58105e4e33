# Validates a VmSpec JSON list written by `nix eval --json
# <flake>#procurator.vmSpecs`: exactly the Cap'n Proto fields, valid names
# and store paths, and a contentHash that recomputes from the boot fields.
# Evaluates to the number of specs, or throws naming the first problem.
#
#   nix-instantiate --eval --arg specsFile ./specs.json nix/tests/check-specs.nix
{ specsFile }:
let
  specLib = import ../lib/spec.nix;
  inherit (builtins) attrNames fromJSON readFile sort match isInt isString all isList length toJSON;
  specs = fromJSON (readFile specsFile);
  fields = sort (a: b: a < b) specLib.fields;
  check = s:
    let where = "spec ${toJSON (s.name or "?")}"; in
    if attrNames s != fields then throw "${where}: fields ${toJSON (attrNames s)} are not ${toJSON fields}"
    else if match "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" s.name == null then throw "${where}: bad name"
    else if !(all specLib.isStorePath [ s.toplevel s.kernelPath ]) then throw "${where}: toplevel/kernelPath not store paths"
    else if !(all (p: p == "" || specLib.isStorePath p) [ s.initrdPath s.diskImagePath ]) then throw "${where}: initrd/disk not store paths"
    else if !(isInt s.cpu && s.cpu > 0 && isInt s.memoryMb && s.memoryMb > 0) then throw "${where}: bad resources"
    else if !(isList s.networkAllowedDomains && all isString s.networkAllowedDomains) then throw "${where}: bad domains"
    else if !(all (k: isString s.labels.${k}) (attrNames s.labels)) then throw "${where}: labels are not strings"
    else if s.contentHash != specLib.contentHashOf s then throw "${where}: contentHash does not recompute"
    else true;
in
if !(isList specs) || specs == [ ] then throw "expected a non-empty list of VmSpecs"
else if !(all check specs) then throw "unreachable"
else length specs
