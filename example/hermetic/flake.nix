# The hermetic example cluster: three VMs (web-0, web-1 in group "web", db-0
# in group "db") whose images are builtins-only derivations, so the flake
# builds with Debian's nix, no nixpkgs and no network. It has no inputs and
# carries its own copy of the builtins-only library (lib/, identical to
# nix/lib; a test checks), because the demo and the tests push this directory
# as a repository of its own.
#
# Flake contract (context/architecture.md, "Flake contract"):
#   nix eval --json .#procurator.vmSpecs        the VmSpec list
#   nix build --json --no-link .#procurator.closure   every path they boot
{
  description = "Procurator hermetic example cluster (no nixpkgs, no network)";

  outputs = { self }:
    let
      system = "x86_64-linux";
      lib = import ./lib/pure.nix;
      image = import ./image.nix { inherit system; };
      groups = import ./vms.nix;

      cluster = lib.evalCluster {
        inherit system;
        mkImage = image.mkImage groups;
        vms = builtins.mapAttrs
          (group: g: {
            inherit (g) replicas labels;
            profile = {
              inherit (g) cpu memoryMb allowedDomains;
              files."/etc/motd" = g.message;
              entrypoint = "cat /etc/motd";
            };
          })
          groups;
      };
    in
    {
      procurator = cluster.procurator;
      vmSpecsJson = cluster.vmSpecsJson;
      packages.${system}.default = cluster.closure;
    };
}
