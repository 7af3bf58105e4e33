# A tiny VM image built by builtins-only derivations: /bin/sh as the builder,
# no PATH, shell builtins only (echo, redirections), so it builds with
# Debian's nix, no nixpkgs and no network. Each part is a single file: a
# kernel and an "initrd" shared by every group, a per-group "disk" holding
# the profile's files, and a per-group "toplevel" that names the other three
# (so they are its runtime references, like a real NixOS system's).
#
# The kernel boots for real: a PVH ELF (guest/pvh.S) assembled and linked
# with the host's binutils by absolute path (/usr/bin/as, /usr/bin/ld; the
# example builds with the sandbox off). It prints "pcr-guest: NAME is up" on
# the serial console, NAME from `systemd.hostname=` on its command line,
# and idles; the initrd and disk are still placeholders it never reads.
#
# Tests edit this file and vms.nix as text (ci_service's tests slow the disk
# build down by replacing its one-line builder): keep the disk builder's
# write on one line and the strings in vms.nix as they are.
{ system }:
let
  inherit (builtins) attrNames concatStringsSep toJSON;

  mkFile = name: script: derivation {
    inherit name system;
    builder = "/bin/sh";
    args = [ "-c" script ];
  };

  kernel = derivation {
    name = "pvh-guest-kernel";
    inherit system;
    builder = "/bin/sh";
    args = [ "-c" ''
      /usr/bin/as --64 -o pvh.o "$src" &&
      /usr/bin/ld -T "$script" --build-id=none --no-warn-rwx-segments -nostdlib -static -o "$out" pvh.o
    '' ];
    src = ./guest/pvh.S;
    script = ./guest/pvh.ld;
  };
  initrd = mkFile "fake-initrd" ''echo "procurator fake initrd" > "$out"'';
in
{
  # The guest kernel on its own, for tests that check or boot it.
  inherit kernel;

  # The mkImage function evalCluster calls: { group, profile } -> paths.
  # `knobs` carries the example's per-group test knobs (message, failBuild).
  mkImage = knobs: { group, profile }:
    let
      k = knobs.${group};
      fileLines = map
        (path: "file ${path} ${profile.files.${path}.mode} ${toJSON profile.files.${path}.text}")
        (attrNames profile.files);
      disk = derivation {
        name = "${group}-disk.img";
        inherit system;
        builder = "/bin/sh";
        args = [ "-c" (if k.failBuild then ''
          echo "fake disk image for ${group}: build failed on purpose (failBuild = true)" >&2
          exit 1
        '' else ''
          echo "$content" > "$out"
        '') ];
        content = concatStringsSep "\n" ([ "procurator fake disk for ${group}" ] ++ fileLines);
      };
      toplevel = mkFile "${group}-system" ''
        echo "kernel ${kernel}" > "$out"
        echo "initrd ${initrd}" >> "$out"
        echo "disk ${disk}" >> "$out"
        echo "entrypoint ${toJSON profile.entrypoint}" >> "$out"
      '';
    in
    {
      toplevel = "${toplevel}";
      kernelPath = "${kernel}";
      initrdPath = "${initrd}";
      diskImagePath = "${disk}";
      cmdline = "console=ttyS0 reboot=t panic=-1 init=${toplevel}";
    };
}
