# Entry point of the Procurator Nix library.
#
#   lib = import ./nix/lib { inherit nixpkgs; };   # nixpkgs: flake input or path
#
# Four layers (design §8): mkVmProfile (validated guest settings),
# mkVmImage (NixOS guest, disk image, kernel, initrd, vmSpec and its JSON),
# evalCluster (topology to VmSpecs), and the NixOS modules (nix/modules: the
# host-wide network; the worker networks each VM and owns its egress rules).
# Everything except the image layer is builtins only (`pure.nix`), so
# `import ./nix/lib { }` works without nixpkgs for profiles, specs and
# clusters whose images come from elsewhere.
{ nixpkgs ? null }:
let
  pure = import ./pure.nix;
  needNixpkgs = what:
    throw "procurator: ${what} needs nixpkgs: import nix/lib { nixpkgs = <nixpkgs flake input or path>; }";
  image = if nixpkgs == null then null else import ./image.nix { inherit nixpkgs; };
in
pure // {
  mkVmImage = if image == null then needNixpkgs "mkVmImage" else image.mkVmImage;
  mkVmSystem = if image == null then needNixpkgs "mkVmSystem" else image.mkVmSystem;
  nixosImage = if image == null then needNixpkgs "nixosImage" else image.nixosImage;
  evalNixosCluster = if image == null then needNixpkgs "evalNixosCluster" else image.evalNixosCluster;
}
