# Evaluates a generated flake's outputs against fake-nixpkgs.nix and prints
# them as plain data: builders with their arguments, paths relative to the
# flake ("path:./web"), fake packages as "pkgs:<name>".
{ flake }:
let
  fakePkgs = import ./fake-nixpkgs.nix;
  root = toString (dirOf flake);
  system = "x86_64-linux";
  outputs = (import flake).outputs {
    self = outputs;
    nixpkgs = {
      lib = fakePkgs.lib;
      legacyPackages = fakePkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ] (_: fakePkgs);
    };
  };
  rel = p:
    let s = toString p; in
    if s == root then "path:./."
    else if builtins.substring 0 (builtins.stringLength root + 1) s == root + "/"
    then "path:." + builtins.substring (builtins.stringLength root) (builtins.stringLength s) s
    else throw "path ${s} is outside the flake";
  clean = v:
    if builtins.isPath v then rel v
    else if builtins.isFunction v then "<function>"
    else if builtins.isList v then map clean v
    else if builtins.isAttrs v then
      (if v ? __autonix_pkg then "pkgs:${v.__autonix_pkg}"
       else if v ? __autonix_builder then
         { builder = v.__autonix_builder; args = clean v.args; }
         // (if v ? __autonix_override && v.__autonix_override != null then { override = clean v.__autonix_override; } else { })
       else builtins.mapAttrs (_: clean) v)
    else v;
in
{
  description = (import flake).description;
  nixpkgsUrl = (import flake).inputs.nixpkgs.url;
  packages = clean outputs.packages.${system};
  devShells = clean outputs.devShells.${system};
  apps = clean outputs.apps.${system};
}
