# Evaluation tests of the builtins-only library: shapes, defaults,
# normalisation, the VmSpec field set and the contentHash rule.
#
#   nix-instantiate --eval --strict nix/tests/eval.nix
#
# evaluates to { failed = [ ... ]; passed = N; }; run.sh fails when `failed`
# is not empty and prints each failure with what was expected.
let
  lib = import ../lib { };
  specLib = import ../lib/spec.nix;
  inherit (builtins) attrNames length map filter all elem match sort;

  store = name: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-${name}";
  fakeImage = tag: { group, profile }: {
    toplevel = store "${group}-${tag}-system";
    kernelPath = store "kernel" + "/vmlinux";
    initrdPath = store "initrd" + "/initrd";
    diskImagePath = store "${group}-${tag}-disk" + "/nixos.img";
    cmdline = "console=ttyS0 init=${store "${group}-${tag}-system"}/init";
  };

  baseSpec = {
    name = "web-0";
    toplevel = store "system";
    kernelPath = store "kernel" + "/vmlinux";
    initrdPath = store "initrd" + "/initrd";
    diskImagePath = store "disk" + "/nixos.img";
    cmdline = "console=ttyS0";
    cpu = 1;
    memoryMb = 256;
    networkAllowedDomains = [ "example.com" ];
    labels = { group = "web"; };
  };
  spec0 = lib.mkVmSpec baseSpec;
  hashWith = change: (lib.mkVmSpec (baseSpec // change)).contentHash;

  twoGroups = tags: lib.evalCluster {
    mkImage = args: fakeImage tags.${args.group} args;
    vms = {
      web = { profile = { cpu = 2; memoryMb = 256; allowedDomains = [ "Example.com" ]; }; replicas = 2; labels = { tier = "frontend"; }; };
      db = { profile = lib.mkVmProfile { memoryMb = 1024; hostname = "database"; kernelParams = [ "quiet" ]; }; };
      idle = { profile = { }; replicas = 0; };
    };
  };
  # nix/flake.nix's outputs with a stand-in nixpkgs that has only what the
  # lazily evaluated parts touch: checks the flake's shape and that its
  # `lib` is this library, without nixpkgs.
  flake = import ../flake.nix;
  stubNixpkgs = {
    lib.genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
    legacyPackages = { };
    outPath = "/nonexistent-nixpkgs";
  };
  flakeOutputs = flake.outputs { self = flakeOutputs; nixpkgs = stubNixpkgs; };
  # example/flake.nix (the reference cluster) with stand-ins for nixpkgs and
  # NixOS: the image layer is replaced by fake paths, everything else (the
  # cluster definition, profiles, limits, per-group modules, host slots) is
  # the example's own and goes through the real validation.
  fakeDrv = name: { type = "derivation"; inherit name; outPath = store name; };
  refStubNixpkgs = {
    legacyPackages.x86_64-linux.python3 = fakeDrv "python3";
    lib.nixosSystem = args: { stubSystem = args; };
  };
  refStubProcurator = {
    lib = lib // {
      evalNixosCluster = args@{ modules, ... }:
        lib.evalCluster ((removeAttrs args [ "modules" ]) // {
          mkImage = a: builtins.seq (modules a.group) (fakeImage "ref" a);
        });
    };
    nixosModules = builtins.listToAttrs (map (n: { name = n; value = { stubModule = n; }; })
      [ "host" "guest" "worker" "control-plane" "ci-service" "cache" "repohub" ]);
  };
  refFlake = import ../../example/flake.nix;
  refOutputs = refFlake.outputs { self = refOutputs; nixpkgs = refStubNixpkgs; procurator = refStubProcurator; };
  c1 = twoGroups { web = "a"; db = "a"; idle = "a"; };
  c2 = twoGroups { web = "a"; db = "b"; idle = "a"; };
  hashes = c: builtins.listToAttrs (map (s: { inherit (s) name; value = s.contentHash; }) c.vmSpecs);

  cases = [
    # --- profile ---
    {
      name = "profile defaults";
      got = lib.mkVmProfile { };
      want = {
        _type = "procurator-vm-profile";
        hostname = null; cpu = 1; memoryMb = 512; packages = [ ]; entrypoint = null;
        powerOffOnExit = false; allowedDomains = [ ]; sshKeys = [ ]; files = { };
        kernelParams = [ ];
      };
    }
    {
      name = "profile normalises domains (lowercase, unique, sorted)";
      got = (lib.mkVmProfile { allowedDomains = [ "b.example.com" "Example.COM" "example.com" "*.pypi.org" ]; }).allowedDomains;
      want = [ "*.pypi.org" "b.example.com" "example.com" ];
    }
    {
      name = "profile expands files";
      got = (lib.mkVmProfile { files = { "/etc/motd" = "hi"; "/etc/key" = { text = "k"; mode = "600"; user = "app"; }; }; }).files;
      want = {
        "/etc/motd" = { text = "hi"; source = null; mode = "0644"; user = "root"; group = "root"; };
        "/etc/key" = { text = "k"; source = null; mode = "0600"; user = "app"; group = "root"; };
      };
    }
    {
      name = "profile keeps valid settings";
      got = lib.mkVmProfile {
        hostname = "api-1"; cpu = 4; memoryMb = 2048; entrypoint = "exec app"; powerOffOnExit = true;
        sshKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq me@host" ];
        packages = [ (store "python3") ]; kernelParams = [ "quiet" "loglevel=3" ];
      };
      want = {
        _type = "procurator-vm-profile";
        hostname = "api-1"; cpu = 4; memoryMb = 2048; entrypoint = "exec app"; powerOffOnExit = true;
        sshKeys = [ "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq me@host" ];
        packages = [ (store "python3") ]; kernelParams = [ "quiet" "loglevel=3" ];
        allowedDomains = [ ]; files = { };
      };
    }
    {
      name = "profile is idempotent";
      got = let p = lib.mkVmProfile { cpu = 2; allowedDomains = [ "A.com" ]; }; in lib.mkVmProfile p == p;
      want = true;
    }
    {
      name = "profile accepts boundary resources";
      got = map (s: let p = lib.mkVmProfile s; in [ p.cpu p.memoryMb ]) [ { cpu = 1; memoryMb = 64; } { cpu = 256; memoryMb = 1048576; } ];
      want = [ [ 1 64 ] [ 256 1048576 ] ];
    }

    # --- vmSpec ---
    {
      name = "vmSpec has exactly the Cap'n Proto VmSpec fields";
      got = attrNames spec0;
      want = sort (a: b: a < b) specLib.fields;
    }
    {
      name = "vmSpec field list is the schema's";
      got = specLib.fields;
      want = [ "name" "toplevel" "kernelPath" "initrdPath" "diskImagePath" "cmdline" "cpu" "memoryMb" "networkAllowedDomains" "contentHash" "labels" ];
    }
    {
      name = "vmSpec keeps the values";
      got = removeAttrs spec0 [ "contentHash" ];
      want = baseSpec;
    }
    {
      name = "vmSpec defaults: no initrd, no disk, empty cmdline, no domains, no labels";
      got = removeAttrs (lib.mkVmSpec { name = "a"; toplevel = store "s"; kernelPath = store "k"; cpu = 1; memoryMb = 1; }) [ "contentHash" "name" "toplevel" "kernelPath" "cpu" "memoryMb" ];
      want = { initrdPath = ""; diskImagePath = ""; cmdline = ""; networkAllowedDomains = [ ]; labels = { }; };
    }
    {
      name = "contentHash is sha256 hex";
      got = match "[0-9a-f]{64}" spec0.contentHash != null;
      want = true;
    }
    {
      name = "contentHash is deterministic";
      got = (lib.mkVmSpec baseSpec).contentHash == spec0.contentHash;
      want = true;
    }
    {
      name = "contentHash changes with each boot field";
      got = map (c: hashWith c != spec0.contentHash) [
        { toplevel = store "system2"; }
        { kernelPath = store "kernel" + "/bzImage"; }
        { initrdPath = ""; }
        { diskImagePath = store "disk2"; }
        { cmdline = "console=ttyS0 quiet"; }
        { cpu = 2; }
        { memoryMb = 512; }
        { networkAllowedDomains = [ ]; }
      ];
      want = [ true true true true true true true true ];
    }
    {
      name = "contentHash ignores labels and name (placement, not boot content)";
      got = [ (hashWith { labels = { group = "web"; zone = "b"; }; }) (hashWith { name = "web-7"; }) ];
      want = [ spec0.contentHash spec0.contentHash ];
    }
    {
      name = "contentHash ignores the order allowed domains were given in";
      got = hashWith { networkAllowedDomains = [ "b.org" "a.org" ]; } == hashWith { networkAllowedDomains = [ "a.org" "b.org" ]; };
      want = true;
    }
    {
      name = "vmSpec JSON round-trips";
      got = builtins.fromJSON (builtins.toJSON spec0);
      want = spec0;
    }

    # --- cluster ---
    {
      name = "cluster names replicas group-index, sorted, zero replicas give none";
      got = map (s: s.name) c1.vmSpecs;
      want = [ "db-0" "web-0" "web-1" ];
    }
    {
      name = "cluster labels carry the group";
      got = map (s: s.labels) c1.vmSpecs;
      want = [ { group = "db"; } { group = "web"; tier = "frontend"; } { group = "web"; tier = "frontend"; } ];
    }
    {
      name = "cluster command line: image, profile params, VM name unless hostname is pinned";
      got = map (s: s.cmdline) c1.vmSpecs;
      want = [
        "console=ttyS0 init=${store "db-a-system"}/init quiet"
        "console=ttyS0 init=${store "web-a-system"}/init systemd.hostname=web-0"
        "console=ttyS0 init=${store "web-a-system"}/init systemd.hostname=web-1"
      ];
    }
    {
      name = "cluster resources and domains come from the profile";
      got = map (s: [ s.cpu s.memoryMb s.networkAllowedDomains ]) c1.vmSpecs;
      want = [ [ 1 1024 [ ] ] [ 2 256 [ "example.com" ] ] [ 2 256 [ "example.com" ] ] ];
    }
    {
      name = "cluster specs are valid vmSpecs (hash recomputes)";
      got = all (s: s.contentHash == specLib.contentHashOf s && attrNames s == sort (a: b: a < b) specLib.fields) c1.vmSpecs;
      want = true;
    }
    {
      name = "cluster totals";
      got = c1.totals;
      want = { vms = 3; cpu = 5; memoryMb = 1536; };
    }
    {
      name = "cluster vms by name";
      got = map (n: [ n c1.vms.${n}.group c1.vms.${n}.index ]) (attrNames c1.vms);
      want = [ [ "db-0" "db" 0 ] [ "web-0" "web" 0 ] [ "web-1" "web" 1 ] ];
    }
    {
      name = "cluster JSON is the spec list";
      got = builtins.fromJSON c1.vmSpecsJson;
      want = c1.vmSpecs;
    }
    {
      name = "cluster flake contract output";
      got = [ (c1.procurator.vmSpecs == c1.vmSpecs) c1.procurator.closure.type (attrNames c1.procurator) ];
      want = [ true "derivation" [ "closure" "vmSpecs" ] ];
    }
    {
      name = "changing one group's image changes only its VMs' hashes";
      got = let h1 = hashes c1; h2 = hashes c2; in map (n: h1.${n} == h2.${n}) [ "db-0" "web-0" "web-1" ];
      want = [ false true true ];
    }
    {
      name = "replicas of a group differ only by name and command line";
      got = let w0 = c1.vms.web-0.spec; w1 = c1.vms.web-1.spec; in
        removeAttrs w0 [ "name" "cmdline" "contentHash" ] == removeAttrs w1 [ "name" "cmdline" "contentHash" ];
      want = true;
    }
    {
      name = "cluster limits at the boundary pass";
      got = (lib.evalCluster {
        mkImage = fakeImage "a";
        vms.web = { profile = { cpu = 2; memoryMb = 256; }; replicas = 2; };
        limits = { maxVms = 2; cpu = 4; memoryMb = 512; };
      }).totals;
      want = { vms = 2; cpu = 4; memoryMb = 512; };
    }
    {
      name = "an empty cluster is valid";
      got = (lib.evalCluster { mkImage = fakeImage "a"; }).vmSpecs;
      want = [ ];
    }
    {
      name = "longest group name that fits";
      got = map (s: s.name) (lib.evalCluster {
        mkImage = fakeImage "a";
        vms.${"a" + builtins.substring 0 60 "0123456789012345678901234567890123456789012345678901234567890123"} = { profile = { }; replicas = 10; };
      }).vmSpecs;
      want = map (i: "a" + builtins.substring 0 60 "0123456789012345678901234567890123456789012345678901234567890123" + "-${toString i}") [ 0 1 2 3 4 5 6 7 8 9 ];
    }

    # --- nix/flake.nix ---
    {
      name = "flake outputs";
      got = attrNames flakeOutputs;
      want = [ "devShells" "lib" "nixosModules" "overlays" "packages" ];
    }
    {
      name = "flake NixOS modules";
      got = attrNames flakeOutputs.nixosModules;
      want = [ "cache" "ci-service" "control-plane" "default" "guest" "host" "repohub" "worker" ];
    }
    {
      name = "flake systems";
      got = [ (attrNames flakeOutputs.packages) (attrNames flakeOutputs.devShells) ];
      want = [ [ "aarch64-linux" "x86_64-linux" ] [ "aarch64-linux" "x86_64-linux" ] ];
    }
    {
      name = "flake lib is the library";
      got = [ (flakeOutputs.lib.mkVmProfile { cpu = 3; }).cpu (attrNames flakeOutputs.lib == attrNames lib) ];
      want = [ 3 true ];
    }
    {
      name = "flake inputs: only nixpkgs";
      got = attrNames flake.inputs;
      want = [ "nixpkgs" ];
    }

    # --- example/flake.nix ---
    {
      name = "reference cluster VMs";
      got = map (s: [ s.name s.cpu s.memoryMb s.labels.role s.networkAllowedDomains ]) refOutputs.procurator.vmSpecs;
      want = [
        [ "control-plane-0" 2 1024 "control" [ ] ]
        [ "py-0" 1 512 "app" [ "files.pythonhosted.org" "pypi.org" ] ]
        [ "worker-0" 2 2048 "worker" [ ] ]
        [ "worker-1" 2 2048 "worker" [ ] ]
      ];
    }
    {
      name = "reference cluster host: only host-wide settings (the worker networks each VM)";
      got = attrNames (builtins.head (builtins.filter (m: m ? procurator) refOutputs.nixosConfigurations.host.stubSystem.modules)).procurator.host;
      want = [ "enable" "externalInterface" ];
    }
    {
      name = "reference cluster inputs";
      got = [ (attrNames refFlake.inputs) refFlake.inputs.procurator.inputs.nixpkgs.follows ];
      want = [ [ "nixpkgs" "procurator" ] "nixpkgs" ];
    }
  ];

  results = map (c: c // { ok = c.got == c.want; }) cases;
  failed = map (c: { inherit (c) name got want; }) (filter (c: !c.ok) results);
in
{
  inherit failed;
  passed = length (filter (c: c.ok) results);
  total = length cases;
}
