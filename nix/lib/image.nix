# mkVmImage: a VM profile turned into a bootable NixOS guest for Cloud
# Hypervisor: the system closure (toplevel), an ext4 root disk image without
# a partition table, the kernel and initrd CH boots directly, the kernel
# command line, and the vmSpec (plus its JSON) that names all of them.
#
# Needs nixpkgs; everything it validates goes through the builtins-only
# layers (profile.nix, spec.nix, cluster.nix) so the rules are the same ones
# the tests check without nixpkgs.
{ nixpkgs }:
let
  pure = import ./pure.nix;
  lib = nixpkgs.lib or (import "${nixpkgs}/lib");

  # The NixOS evaluation of a guest: our guest module, the profile, then the
  # caller's own modules (which may override anything).
  mkVmSystem = { system ? "x86_64-linux", profile, modules ? [ ] }:
    import "${nixpkgs}/nixos/lib/eval-config.nix" {
      inherit system;
      modules = [
        ../modules/vm-module.nix
        { procurator.guest.profile = pure.mkVmProfile profile; }
      ] ++ modules;
    };

  # The store paths CH boots, read from an evaluated guest system.
  # Cloud Hypervisor boots an uncompressed ELF vmlinux (PVH) on x86_64 and
  # the arm64 `Image` elsewhere; the kernel's `dev` output carries vmlinux.
  bootPaths = nixos:
    let
      cfg = nixos.config;
      toplevel = cfg.system.build.toplevel;
      kernelPkg = cfg.boot.kernelPackages.kernel;
      isX86 = nixos.pkgs.stdenv.hostPlatform.isx86_64;
    in
    {
      toplevel = "${toplevel}";
      kernelPath =
        if isX86 then "${kernelPkg.dev}/vmlinux"
        else "${cfg.system.build.kernel}/${cfg.system.boot.loader.kernelFile}";
      initrdPath = "${cfg.system.build.initialRamdisk}/${cfg.system.boot.loader.initrdFile}";
      diskImagePath = "${cfg.system.build.procuratorDiskImage}/nixos.img";
      # Stage 1 finds the system through init=; the rest comes from the
      # guest module (console, panic and reboot behaviour).
      cmdline = lib.concatStringsSep " " ([ "init=${toplevel}/init" ] ++ cfg.boot.kernelParams);
    };

  # The mkImage function evalCluster takes: one NixOS system per VM group,
  # shared by the group's replicas (each gets its name on the command line).
  nixosImage = { system ? "x86_64-linux", modules ? [ ] }:
    { group, profile }:
    bootPaths (mkVmSystem {
      inherit system profile;
      modules = (if builtins.isFunction modules then modules group else modules);
    });

  # evalCluster with real NixOS images. `modules` is a list added to every
  # group's guest, or a function group -> list.
  evalNixosCluster = args@{ system ? "x86_64-linux", modules ? [ ], ... }:
    pure.evalCluster ((removeAttrs args [ "modules" ]) // {
      inherit system;
      mkImage = nixosImage { inherit system modules; };
    });

  # One VM on its own (outside a cluster): the image, its vmSpec and JSON.
  mkVmImage =
    { profile
    , name ? null
    , system ? "x86_64-linux"
    , labels ? { }
    , modules ? [ ]
    }:
    let
      p = pure.mkVmProfile profile;
      vmName =
        if name != null then name
        else if p.hostname != null then p.hostname
        else throw "procurator: mkVmImage: give a name or a profile hostname";
      nixos = mkVmSystem { inherit system modules; profile = p; };
      paths = bootPaths nixos;
      vmSpec = pure.mkVmSpec {
        name = vmName;
        inherit (paths) toplevel kernelPath initrdPath diskImagePath;
        cmdline = lib.concatStringsSep " " ([ paths.cmdline ] ++ p.kernelParams
          ++ lib.optional (p.hostname == null) "systemd.hostname=${vmName}");
        inherit (p) cpu memoryMb;
        networkAllowedDomains = p.allowedDomains;
        inherit labels;
      };
    in
    paths // {
      inherit nixos vmSpec;
      profile = p;
      config = nixos.config;
      kernel = nixos.config.boot.kernelPackages.kernel;
      initrd = nixos.config.system.build.initialRamdisk;
      diskImage = nixos.config.system.build.procuratorDiskImage;
      vmSpecJson = builtins.toJSON vmSpec;
      closure = pure.mkClosure { inherit system; specs = [ vmSpec ]; name = "${vmName}-closure"; };
    };
in
{
  inherit mkVmSystem mkVmImage nixosImage evalNixosCluster bootPaths;
}
