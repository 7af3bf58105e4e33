# Evaluates the cluster half of a flake written by `pcr init` with the real
# Procurator library (nix/lib/pure.nix: mkVmProfile, mkVmSpec, evalCluster)
# and autonix's fake nixpkgs, so no nixpkgs and no network are needed. Only
# the NixOS image is faked: evalNixosCluster becomes evalCluster with an
# mkImage that names store paths derived from the group's profile, so a
# change of package or entrypoint changes the VM's contentHash as a real
# image would.
{ flake, procuratorLib, fakeNixpkgs }:
let
  pure = import procuratorLib;
  fakePkgs = import fakeNixpkgs;
  # A nix32 store path for `name`, its hash taken from `seed`.
  storePath = seed: name:
    let
      hex = builtins.hashString "sha256" seed;
      nix32 = builtins.replaceStrings [ "e" ] [ "x" ] hex;
    in
    "${builtins.storeDir}/${builtins.substring 0 32 nix32}-${name}";
  mkImage = { group, profile }:
    let seed = builtins.toJSON { inherit (profile) entrypoint packages; }; in
    {
      toplevel = storePath seed "nixos-system-${group}";
      kernelPath = "${storePath "kernel" "linux"}/vmlinux";
      initrdPath = "${storePath "initrd" "initrd"}/initrd";
      diskImagePath = "${storePath seed "${group}-disk"}/nixos.img";
      cmdline = "init=${storePath seed "nixos-system-${group}"}/init";
    };
  procurator = {
    lib = pure // {
      evalNixosCluster = args:
        pure.evalCluster ((removeAttrs args [ "modules" ]) // { inherit mkImage; });
    };
  };
  systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
  outputs = (import flake).outputs {
    self = outputs;
    nixpkgs = {
      lib = fakePkgs.lib;
      legacyPackages = fakePkgs.lib.genAttrs systems (_: fakePkgs);
    };
    inherit procurator;
  };
in
{
  vmSpecs = outputs.procurator.vmSpecs;
  closure = outputs.procurator.closure.drvPath;
  inputs = builtins.attrNames (import flake).inputs;
}
