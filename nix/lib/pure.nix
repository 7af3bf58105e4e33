# The builtins-only part of the Procurator Nix library: profile, vmSpec,
# cluster. Needs no nixpkgs, so it evaluates anywhere (tests, the hermetic
# example). Copied byte for byte into example/hermetic/lib (a test checks).
let
  profile = import ./profile.nix;
  spec = import ./spec.nix;
  cluster = import ./cluster.nix;
in
{
  inherit (profile) mkVmProfile;
  inherit (spec) mkVmSpec mkClosure contentHashOf;
  inherit (cluster) evalCluster;
}
