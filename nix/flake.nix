# Procurator's Nix side: the VM image library, the NixOS modules for hosts,
# guests and services, the Rust services as packages, and a dev shell.
#
#   lib             mkVmProfile, mkVmSpec, evalCluster (builtins only) and
#                   mkVmImage, evalNixosCluster (NixOS guests)
#   nixosModules    host, guest, worker, control-plane, ci-service, cache,
#                   repohub, default (all service modules)
#   packages        one per service, plus `workspace` (every binary)
#   devShells       cargo, capnp, nix, git and friends
{
  description = "Procurator: Nix-native VM orchestration (library, modules, packages)";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # A service module with its package defaulting to this flake's build.
      withPackage = module: option: pkgName: { lib, pkgs, ... }: {
        imports = [ module ];
        config.services.procurator.${option}.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.${pkgName};
      };
    in
    {
      lib = import ./lib { inherit nixpkgs; };

      nixosModules = {
        host = ./modules/host.nix;
        guest = ./modules/vm-module.nix;
        worker = withPackage ./modules/worker.nix "worker" "worker";
        control-plane = withPackage ./modules/control-plane.nix "control-plane" "control-plane";
        ci-service = withPackage ./modules/ci-service.nix "ci-service" "ci-service";
        cache = withPackage ./modules/cache.nix "cache" "cache";
        repohub = { lib, pkgs, ... }: {
          imports = [ (withPackage ./modules/repohub.nix "repohub" "repohub") ];
          config.services.procurator.repohub.autonix = lib.mkDefault
            "${self.packages.${pkgs.stdenv.hostPlatform.system}.autonix}/bin/autonix";
        };
        default = {
          imports = with self.nixosModules; [ host worker control-plane ci-service cache repohub ];
        };
      };

      # The workspace root is this flake's parent directory.
      packages = forAllSystems (pkgs: import ./packages.nix { inherit pkgs; src = ../.; });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [
            cargo rustc rustfmt clippy rust-analyzer cargo-nextest
            capnproto pkg-config zlib openssl
            git nix sqlite cloud-hypervisor nginx
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      overlays.default = final: prev: {
        procurator = import ./packages.nix { pkgs = final; src = ../.; };
      };
    };
}
