# mkVmProfile: validates and normalises a VM's guest settings.
#
# Builtins only (no nixpkgs): this file is evaluated by the tests on a
# machine without nixpkgs and copied byte for byte into example/hermetic/lib.
#
# Input (every attribute optional unless noted):
#   hostname        null (take the VM's name at boot) or a DNS label
#   cpu             vCPUs, integer 1..256                     (default 1)
#   memoryMb        MiB, integer 64..1048576                  (default 512)
#   packages        list of derivations or store path strings (default [])
#   entrypoint      null or a non-empty shell command run as the workload
#   powerOffOnExit  bool: power the VM off when the entrypoint ends
#   allowedDomains  egress allowlist: DNS names, "*." prefix allowed
#   sshKeys         list of OpenSSH public keys (root login)
#   files           { "/abs/path" = "text" | { text | source; mode; user; group; }; }
#   kernelParams    extra kernel command line words
#
# Output: the same keys, normalised (domains lowercased, sorted, unique;
# files expanded to { text source mode user group }), plus
# `_type = "procurator-vm-profile"` so evalCluster can tell a profile from
# raw settings.
let
  inherit (builtins)
    attrNames concatStringsSep elem filter foldl' genList head isAttrs isBool
    isInt isList isString length listToAttrs mapAttrs match sort stringLength
    substring tail toJSON typeOf;

  fail = msg: throw "procurator: mkVmProfile: ${msg}";

  # Human-readable rendering of a bad value for error messages.
  show = v:
    if isString v then toJSON v
    else if isInt v || isBool v || v == null then toJSON v
    else "a ${typeOf v}";

  lowerChars = {
    A = "a"; B = "b"; C = "c"; D = "d"; E = "e"; F = "f"; G = "g"; H = "h";
    I = "i"; J = "j"; K = "k"; L = "l"; M = "m"; N = "n"; O = "o"; P = "p";
    Q = "q"; R = "r"; S = "s"; T = "t"; U = "u"; V = "v"; W = "w"; X = "x";
    Y = "y"; Z = "z";
  };
  toLower = s:
    concatStringsSep "" (genList
      (i: let c = substring i 1 s; in lowerChars.${c} or c)
      (stringLength s));

  unique = list:
    foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ] list;

  isDnsLabel = s: isString s && match "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" s != null;

  # A domain: labels of letters, digits and dashes separated by dots, at most
  # 253 characters, optionally "*." in front (any subdomain).
  isDomain = s:
    let
      bare = if match "\\*\\..*" s != null then substring 2 (stringLength s) s else s;
    in
    stringLength s <= 253
    && match "([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*" bare != null;

  isStorePathLike = p:
    (isAttrs p && (p.type or null) == "derivation")
    || (isString p && match "/nix/store/[0-9a-z]{32}-.+" p != null);

  knownKeys = [
    "hostname" "cpu" "memoryMb" "packages" "entrypoint" "powerOffOnExit"
    "allowedDomains" "sshKeys" "files" "kernelParams" "_type"
  ];

  checkFile = path: value:
    let
      where = "files.${toJSON path}";
      spec = if isString value then { text = value; } else value;
      fileKeys = [ "text" "source" "mode" "user" "group" ];
      unknown = filter (k: !(elem k fileKeys)) (attrNames spec);
      mode = spec.mode or "0644";
      user = spec.user or "root";
      group = spec.group or "root";
      text = spec.text or null;
      source = spec.source or null;
    in
    if match "/([^/]+/)*[^/]+" path == null || match "(.*/)?\\.\\.?(/.*)?" path != null then
      fail "${where}: the name must be an absolute file path without '.' or '..' components"
    else if !(isString value || isAttrs value) then
      fail "${where} must be a string or an attribute set, got ${show value}"
    else if unknown != [ ] then
      fail "${where} has unknown attribute ${toJSON (head unknown)} (known: ${concatStringsSep ", " fileKeys})"
    else if (text == null) == (source == null) then
      fail "${where} needs exactly one of text or source"
    else if text != null && !(isString text) then
      fail "${where}.text must be a string, got ${show text}"
    else if !(isString mode) || match "0?[0-7]{3}" mode == null then
      fail "${where}.mode must be an octal string like \"0644\", got ${show mode}"
    else if !(isString user) || match "[a-z_][a-z0-9_-]*" user == null then
      fail "${where}.user must be a user name, got ${show user}"
    else if !(isString group) || match "[a-z_][a-z0-9_-]*" group == null then
      fail "${where}.group must be a group name, got ${show group}"
    else
      { inherit text source user group; mode = if stringLength mode == 3 then "0" + mode else mode; };

  mkVmProfile = settings:
    let
      s = if isAttrs settings then settings else fail "settings must be an attribute set, got ${show settings}";
      unknown = filter (k: !(elem k knownKeys)) (attrNames s);

      hostname = s.hostname or null;
      cpu = s.cpu or 1;
      memoryMb = s.memoryMb or 512;
      packages = s.packages or [ ];
      entrypoint = s.entrypoint or null;
      powerOffOnExit = s.powerOffOnExit or false;
      allowedDomains = s.allowedDomains or [ ];
      sshKeys = s.sshKeys or [ ];
      files = s.files or { };
      kernelParams = s.kernelParams or [ ];

      badDomain = filter (d: !(isString d) || !(isDomain (toLower d))) allowedDomains;
      badKey = filter (k: !(isString k) || match "(ssh-(ed25519|rsa|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\\.com) [A-Za-z0-9+/]+=*( .*)?" k == null) sshKeys;
      badPackage = filter (p: !(isStorePathLike p)) packages;
      badParam = filter (p: !(isString p) || p == "" || match ".*[[:space:]].*" p != null) kernelParams;
    in
    if (s._type or null) == "procurator-vm-profile" then s
    else if unknown != [ ] then
      fail "unknown setting ${toJSON (head unknown)} (known: ${concatStringsSep ", " (filter (k: k != "_type") knownKeys)})"
    else if hostname != null && !(isDnsLabel hostname) then
      fail "hostname must be null or a DNS label ([a-z0-9-], at most 63 characters, no leading or trailing dash), got ${show hostname}"
    else if !(isInt cpu) || cpu < 1 || cpu > 256 then
      fail "cpu must be an integer between 1 and 256, got ${show cpu}"
    else if !(isInt memoryMb) || memoryMb < 64 || memoryMb > 1048576 then
      fail "memoryMb must be an integer between 64 and 1048576, got ${show memoryMb}"
    else if !(isList packages) then
      fail "packages must be a list, got ${show packages}"
    else if badPackage != [ ] then
      fail "packages must hold derivations or store paths, got ${show (head badPackage)}"
    else if entrypoint != null && (!(isString entrypoint) || match "[[:space:]]*" entrypoint != null) then
      fail "entrypoint must be null or a non-empty command string, got ${show entrypoint}"
    else if !(isBool powerOffOnExit) then
      fail "powerOffOnExit must be a boolean, got ${show powerOffOnExit}"
    else if powerOffOnExit && entrypoint == null then
      fail "powerOffOnExit needs an entrypoint"
    else if !(isList allowedDomains) then
      fail "allowedDomains must be a list of domain names, got ${show allowedDomains}"
    else if badDomain != [ ] then
      fail "allowedDomains: ${show (head badDomain)} is not a domain name (labels of a-z, 0-9 and '-', optionally starting with \"*.\")"
    else if !(isList sshKeys) then
      fail "sshKeys must be a list of OpenSSH public keys, got ${show sshKeys}"
    else if badKey != [ ] then
      fail "sshKeys: ${show (head badKey)} is not an OpenSSH public key (\"ssh-ed25519 AAAA... comment\")"
    else if !(isAttrs files) then
      fail "files must be an attribute set of absolute paths, got ${show files}"
    else if !(isList kernelParams) then
      fail "kernelParams must be a list of strings, got ${show kernelParams}"
    else if badParam != [ ] then
      fail "kernelParams: ${show (head badParam)} must be a non-empty string without spaces"
    else
      let
        normFiles = mapAttrs checkFile files;
      in
      # Force every file check now so errors surface at profile creation,
      # not later when an image builder happens to read one file.
      builtins.seq (foldl' (acc: f: builtins.seq normFiles.${f} acc) null (attrNames normFiles)) {
        _type = "procurator-vm-profile";
        inherit hostname cpu memoryMb packages entrypoint powerOffOnExit sshKeys kernelParams;
        allowedDomains = sort (a: b: a < b) (unique (map toLower allowedDomains));
        files = normFiles;
      };
in
{
  inherit mkVmProfile isDnsLabel isDomain toLower;
}
