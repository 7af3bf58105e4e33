# Every validation error of the builtins-only library, one case each:
#   <case> = { expr = <expression that must throw>; msg = <text stderr must contain>; };
# run.sh evaluates each `expr` in its own nix-instantiate process (a throw
# aborts the evaluation, and builtins.tryEval cannot see the message) and
# checks that it fails with `msg`.
let
  lib = import ../lib { };
  p = lib.mkVmProfile;
  store = name: "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-${name}";
  image = { group, profile }: {
    toplevel = store "system"; kernelPath = store "kernel"; initrdPath = "";
    diskImagePath = ""; cmdline = "console=ttyS0";
  };
  spec = args: (lib.mkVmSpec ({
    name = "vm-0"; toplevel = store "system"; kernelPath = store "kernel"; cpu = 1; memoryMb = 64;
  } // args)).contentHash;
  cluster = args: (lib.evalCluster ({ mkImage = image; } // args)).vmSpecs;
  web = entry: cluster { vms.web = { profile = { }; } // entry; };
  many = n: f: builtins.listToAttrs (builtins.genList (i: { name = "k${toString i}"; value = f i; }) n);
  long = "a123456789012345678901234567890123456789012345678901234567890123"; # 64 chars
in
{
  # --- mkVmProfile ---
  profile-not-attrs = { expr = p 3; msg = "mkVmProfile: settings must be an attribute set, got 3"; };
  profile-unknown-setting = { expr = p { cpus = 2; }; msg = "mkVmProfile: unknown setting \"cpus\""; };
  profile-hostname-bad = { expr = p { hostname = "Web_1"; }; msg = "mkVmProfile: hostname must be null or a DNS label"; };
  profile-hostname-long = { expr = p { hostname = long; }; msg = "hostname must be null or a DNS label"; };
  profile-hostname-dash = { expr = p { hostname = "web-"; }; msg = "hostname must be null or a DNS label"; };
  profile-cpu-zero = { expr = p { cpu = 0; }; msg = "mkVmProfile: cpu must be an integer between 1 and 256, got 0"; };
  profile-cpu-big = { expr = p { cpu = 257; }; msg = "cpu must be an integer between 1 and 256, got 257"; };
  profile-cpu-string = { expr = p { cpu = "2"; }; msg = "cpu must be an integer between 1 and 256, got \"2\""; };
  profile-memory-small = { expr = p { memoryMb = 32; }; msg = "mkVmProfile: memoryMb must be an integer between 64 and 1048576, got 32"; };
  profile-memory-float = { expr = p { memoryMb = 512.5; }; msg = "memoryMb must be an integer between 64 and 1048576, got a float"; };
  profile-packages-not-list = { expr = p { packages = "python3"; }; msg = "mkVmProfile: packages must be a list"; };
  profile-packages-bad = { expr = p { packages = [ "python3" ]; }; msg = "packages must hold derivations or store paths, got \"python3\""; };
  profile-entrypoint-empty = { expr = p { entrypoint = "  "; }; msg = "mkVmProfile: entrypoint must be null or a non-empty command string"; };
  profile-entrypoint-type = { expr = p { entrypoint = [ "python3" ]; }; msg = "entrypoint must be null or a non-empty command string, got a list"; };
  profile-poweroff-type = { expr = p { powerOffOnExit = "yes"; entrypoint = "x"; }; msg = "mkVmProfile: powerOffOnExit must be a boolean"; };
  profile-poweroff-no-entrypoint = { expr = p { powerOffOnExit = true; }; msg = "mkVmProfile: powerOffOnExit needs an entrypoint"; };
  profile-domains-not-list = { expr = p { allowedDomains = "example.com"; }; msg = "mkVmProfile: allowedDomains must be a list of domain names"; };
  profile-domain-url = { expr = p { allowedDomains = [ "https://example.com" ]; }; msg = "allowedDomains: \"https://example.com\" is not a domain name"; };
  profile-domain-dash = { expr = p { allowedDomains = [ "-bad.example.com" ]; }; msg = "allowedDomains: \"-bad.example.com\" is not a domain name"; };
  profile-domain-type = { expr = p { allowedDomains = [ 1 ]; }; msg = "allowedDomains: 1 is not a domain name"; };
  profile-sshkeys-not-list = { expr = p { sshKeys = "ssh-ed25519 AAAA me"; }; msg = "mkVmProfile: sshKeys must be a list of OpenSSH public keys"; };
  profile-sshkey-bad = { expr = p { sshKeys = [ "not a key" ]; }; msg = "sshKeys: \"not a key\" is not an OpenSSH public key"; };
  profile-files-not-attrs = { expr = p { files = [ "/etc/motd" ]; }; msg = "mkVmProfile: files must be an attribute set of absolute paths"; };
  profile-file-relative = { expr = p { files."etc/motd" = "x"; }; msg = "files.\"etc/motd\": the name must be an absolute file path"; };
  profile-file-dotdot = { expr = p { files."/etc/../passwd" = "x"; }; msg = "files.\"/etc/../passwd\": the name must be an absolute file path"; };
  profile-file-dir = { expr = p { files."/etc/" = "x"; }; msg = "files.\"/etc/\": the name must be an absolute file path"; };
  profile-file-value = { expr = p { files."/etc/x" = 3; }; msg = "files.\"/etc/x\" must be a string or an attribute set, got 3"; };
  profile-file-unknown = { expr = p { files."/etc/x" = { text = "a"; owner = "x"; }; }; msg = "files.\"/etc/x\" has unknown attribute \"owner\""; };
  profile-file-no-content = { expr = p { files."/etc/x" = { mode = "0644"; }; }; msg = "files.\"/etc/x\" needs exactly one of text or source"; };
  profile-file-two-contents = { expr = p { files."/etc/x" = { text = "a"; source = ./eval.nix; }; }; msg = "files.\"/etc/x\" needs exactly one of text or source"; };
  profile-file-text-type = { expr = p { files."/etc/x" = { text = 1; }; }; msg = "files.\"/etc/x\".text must be a string, got 1"; };
  profile-file-mode = { expr = p { files."/etc/x" = { text = "a"; mode = "999"; }; }; msg = "files.\"/etc/x\".mode must be an octal string like \"0644\", got \"999\""; };
  profile-file-user = { expr = p { files."/etc/x" = { text = "a"; user = "Root!"; }; }; msg = "files.\"/etc/x\".user must be a user name, got \"Root!\""; };
  profile-file-group = { expr = p { files."/etc/x" = { text = "a"; group = ""; }; }; msg = "files.\"/etc/x\".group must be a group name, got \"\""; };
  profile-kernelparams-not-list = { expr = p { kernelParams = "quiet"; }; msg = "mkVmProfile: kernelParams must be a list of strings"; };
  profile-kernelparam-space = { expr = p { kernelParams = [ "a b" ]; }; msg = "kernelParams: \"a b\" must be a non-empty string without spaces"; };

  # --- mkVmSpec ---
  spec-name = { expr = spec { name = "Web-0"; }; msg = "mkVmSpec: name must be a DNS label"; };
  spec-name-long = { expr = spec { name = long; }; msg = "mkVmSpec: name must be a DNS label"; };
  spec-toplevel = { expr = spec { toplevel = "/tmp/system"; }; msg = "mkVmSpec: VM \"vm-0\": toplevel must be a store path, got \"/tmp/system\""; };
  spec-toplevel-hash = { expr = spec { toplevel = "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-system"; }; msg = "toplevel must be a store path"; };
  spec-kernel = { expr = spec { kernelPath = store "kernel/../../etc/passwd"; }; msg = "VM \"vm-0\": kernelPath must be a store path"; };
  spec-initrd = { expr = spec { initrdPath = "initrd"; }; msg = "VM \"vm-0\": initrdPath must be a store path or \"\""; };
  spec-disk = { expr = spec { diskImagePath = "/dev/vda"; }; msg = "VM \"vm-0\": diskImagePath must be a store path or \"\""; };
  spec-cmdline-type = { expr = spec { cmdline = [ "console=ttyS0" ]; }; msg = "VM \"vm-0\": cmdline must be a string of at most 4096 bytes"; };
  spec-cmdline-long = { expr = spec { cmdline = builtins.concatStringsSep "" (builtins.genList (_: long) 65); }; msg = "cmdline must be a string of at most 4096 bytes"; };
  spec-cpu = { expr = spec { cpu = 0; }; msg = "VM \"vm-0\": cpu must be an integer between 1 and 256, got 0"; };
  spec-cpu-big = { expr = spec { cpu = 300; }; msg = "cpu must be an integer between 1 and 256, got 300"; };
  spec-memory = { expr = spec { memoryMb = 0; }; msg = "VM \"vm-0\": memoryMb must be an integer between 1 and 4194304, got 0"; };
  spec-domains-type = { expr = spec { networkAllowedDomains = [ 1 ]; }; msg = "VM \"vm-0\": networkAllowedDomains must be a list of strings"; };
  spec-domains-many = { expr = spec { networkAllowedDomains = builtins.genList (i: "d${toString i}.org") 257; }; msg = "networkAllowedDomains has more than 256 entries"; };
  spec-labels-type = { expr = spec { labels = [ "group=web" ]; }; msg = "VM \"vm-0\": labels must be an attribute set of strings, got a list"; };
  spec-labels-many = { expr = spec { labels = many 65 (i: "v"); }; msg = "labels has more than 64 entries"; };
  spec-label-key = { expr = spec { labels."bad key" = "v"; }; msg = "label \"bad key\" = \"v\" is not a valid label"; };
  spec-label-value = { expr = spec { labels.tier = "front end"; }; msg = "label \"tier\" = \"front end\" is not a valid label"; };

  # --- evalCluster ---
  cluster-not-attrs = { expr = (lib.evalCluster 1).vmSpecs; msg = "evalCluster: arguments must be an attribute set, got 1"; };
  cluster-unknown-arg = { expr = cluster { vm = { }; }; msg = "evalCluster: unknown argument \"vm\""; };
  cluster-no-mkimage = { expr = (lib.evalCluster { vms = { }; }).vmSpecs; msg = "evalCluster: needs mkImage"; };
  cluster-mkimage-type = { expr = cluster { mkImage = image { group = "x"; profile = { }; }; }; msg = "evalCluster: mkImage must be a function"; };
  cluster-vms-type = { expr = cluster { vms = [ ]; }; msg = "evalCluster: vms must be an attribute set of VM groups, got a list"; };
  cluster-group-name = { expr = cluster { vms.Web = { profile = { }; }; }; msg = "evalCluster: VM group name \"Web\" is not a DNS label"; };
  cluster-group-type = { expr = cluster { vms.web = 1; }; msg = "evalCluster: vms.web must be an attribute set, got 1"; };
  cluster-group-unknown = { expr = web { replica = 2; }; msg = "evalCluster: vms.web has unknown attribute \"replica\""; };
  cluster-group-no-profile = { expr = cluster { vms.web = { replicas = 1; }; }; msg = "evalCluster: vms.web needs a profile"; };
  cluster-replicas-negative = { expr = web { replicas = -1; }; msg = "vms.web.replicas must be an integer between 0 and 1000, got -1"; };
  cluster-replicas-type = { expr = web { replicas = "2"; }; msg = "vms.web.replicas must be an integer between 0 and 1000, got \"2\""; };
  cluster-replicas-big = { expr = web { replicas = 1001; }; msg = "vms.web.replicas must be an integer between 0 and 1000, got 1001"; };
  cluster-name-too-long = { expr = cluster { vms.${builtins.substring 0 61 long} = { profile = { }; replicas = 11; }; }; msg = "replica names \"${builtins.substring 0 61 long}-N\" would be longer than 63 characters"; };
  cluster-labels-type = { expr = web { labels = "web"; }; msg = "vms.web.labels must be an attribute set, got \"web\""; };
  cluster-labels-group = { expr = web { labels.group = "other"; }; msg = "vms.web.labels: \"group\" is set by evalCluster to the group name"; };
  cluster-label-value = { expr = web { labels.tier = 1; }; msg = "vms.web.labels.tier must be a string, got 1"; };
  cluster-label-invalid = { expr = web { labels.tier = "front end"; }; msg = "mkVmSpec: VM \"web-0\": label \"tier\" = \"front end\" is not a valid label"; };
  cluster-profile-error = { expr = web { profile = { cpu = 0; }; }; msg = "mkVmProfile: cpu must be an integer between 1 and 256, got 0"; };
  cluster-image-type = { expr = cluster { mkImage = _: "/nix/store/x"; vms.web = { profile = { }; }; }; msg = "vms.web: mkImage must return an attribute set"; };
  cluster-image-missing = { expr = cluster { mkImage = a: removeAttrs (image a) [ "diskImagePath" ]; vms.web = { profile = { }; }; }; msg = "vms.web: mkImage result lacks \"diskImagePath\""; };
  cluster-image-bad-path = { expr = cluster { mkImage = a: image a // { toplevel = "/tmp/x"; }; vms.web = { profile = { }; }; }; msg = "mkVmSpec: VM \"web-0\": toplevel must be a store path"; };
  cluster-limits-type = { expr = cluster { limits = 3; }; msg = "evalCluster: limits must be an attribute set"; };
  cluster-limits-unknown = { expr = cluster { limits.vms = 3; }; msg = "evalCluster: limits has unknown attribute \"vms\""; };
  cluster-limits-negative = { expr = cluster { limits.cpu = -1; }; msg = "evalCluster: limits must be non-negative integers or null"; };
  cluster-over-vms = { expr = cluster { vms.web = { profile = { }; replicas = 3; }; limits.maxVms = 2; }; msg = "evalCluster: the cluster needs 3 VMs but limits.maxVms is 2"; };
  cluster-over-cpu = { expr = cluster { vms.web = { profile.cpu = 3; replicas = 2; }; limits.cpu = 5; }; msg = "evalCluster: the cluster needs 6 cpu but limits.cpu is 5"; };
  cluster-over-memory = { expr = cluster { vms.web = { profile.memoryMb = 1024; replicas = 2; }; limits.memoryMb = 2000; }; msg = "evalCluster: the cluster needs 2048 memoryMb but limits.memoryMb is 2000"; };

  # --- library entry point ---
  image-needs-nixpkgs = { expr = lib.mkVmImage { profile = { }; }; msg = "procurator: mkVmImage needs nixpkgs"; };
}
