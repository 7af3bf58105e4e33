# The Procurator Rust services built with nixpkgs' rustPlatform from the
# workspace at `src` (the repository root). `workspace` builds every crate
# once; each service package builds only its crate (`cargo build -p`), so a
# host that runs one service does not pull the others.
{ pkgs, src }:
let
  inherit (pkgs) lib rustPlatform;

  # The workspace minus what cargo never reads (Nix files, docs, build output),
  # so editing a module does not rebuild the binaries.
  cleanSrc = lib.cleanSourceWith {
    src = lib.cleanSource src;
    filter = path: type:
      let rel = lib.removePrefix (toString src + "/") (toString path); in
      !(lib.hasPrefix "target" rel || lib.hasPrefix "nix" rel || lib.hasPrefix "example" rel
        || lib.hasPrefix "context" rel || lib.hasSuffix ".md" rel);
  };

  mkCrate = { pname, crate ? pname, description, binaries ? [ ] }:
    rustPlatform.buildRustPackage {
      inherit pname;
      version = "0.1.0";
      src = cleanSrc;
      cargoLock.lockFile = src + "/Cargo.lock";
      cargoBuildFlags = lib.optionals (crate != null) [ "-p" crate ];
      # Integration tests spawn services, nix and git against temp dirs; they
      # run in CI, not in the sandboxed package build.
      doCheck = false;
      # capnp compiles the schemas (commands/build.rs); pkg-config, zlib and
      # sqlite for libgit2-sys and rusqlite (bundled, but linked against libc).
      nativeBuildInputs = [ pkgs.capnproto pkgs.pkg-config ];
      buildInputs = [ pkgs.zlib pkgs.openssl ];
      meta = {
        inherit description;
        license = lib.licenses.asl20;
        platforms = lib.platforms.linux;
      } // lib.optionalAttrs (binaries != [ ]) { mainProgram = lib.head binaries; };
    };
in
rec {
  worker = mkCrate { pname = "worker"; description = "Procurator worker: Cloud Hypervisor VMs reconciled to the control plane"; binaries = [ "worker" ]; };
  control-plane = mkCrate { pname = "control-plane"; crate = "control_plane"; description = "Procurator control plane (Master server, scheduler)"; binaries = [ "control_plane" ]; };
  ci-service = mkCrate { pname = "ci-service"; crate = "ci_service"; description = "Procurator CI: evaluate, build, cache, publish"; binaries = [ "ci_service" ]; };
  cache = mkCrate { pname = "cache"; description = "Procurator Nix binary cache server"; binaries = [ "cache" ]; };
  repohub = mkCrate { pname = "repohub"; description = "Procurator git hosting and web UI"; binaries = [ "repohub" ]; };
  autonix = mkCrate { pname = "autonix"; description = "Writes a flake for a repository"; binaries = [ "autonix" ]; };
  cli = mkCrate { pname = "pcr"; crate = "cli"; description = "Procurator CLI (pcr, pcr-test, pcr-worker-test)"; binaries = [ "pcr" ]; };
  workspace = mkCrate { pname = "procurator"; crate = null; description = "Every Procurator binary"; };
  default = workspace;
}
