#!/usr/bin/env bash
# Regenerates the committed seed inputs in fuzz/corpus/ from readable
# sources: Cap'n Proto messages with `capnp encode`, NARs with
# `nix-store --dump`, autonix inputs from autonix/tests/fixtures.
# Needs capnproto, nix-bin and python3 (all installed by scripts/install-deps.sh
# except python3, which Debian ships). Run from anywhere; rewrites only
# generated seeds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
corpus=$root/fuzz/corpus
mkdir -p "$corpus"/{vmspec_json,capnp_convert,narinfo,nar,autonix_manifests}

# --- capnp_convert: first byte picks the root struct (see the target).
schema=$root/commands/schema
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# publishState's implicit params struct cannot be named on the command line;
# this struct has the same ordinals and types, hence the same wire layout.
cat > "$tmp/seed.capnp" <<'CAPNP'
@0xa1b2c3d4e5f60718;
using Common = import "/common.capnp";
struct PublishParams {
  commit @0 :Text;
  generation @1 :UInt64;
  intentHash @2 :Text;
  vmSpecs @3 :List(Common.VmSpec);
}
CAPNP
spec='(name = "hello", toplevel = "/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system", kernelPath = "/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage", initrdPath = "/nix/store/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-initrd/initrd", cmdline = "console=ttyS0", cpu = 1, memoryMb = 256, networkAllowedDomains = ["example.com", "*.nixos.org"], contentHash = "sha256-demo", labels = [(key = "app", value = "hello")])'
status='(id = "01890a5d-ac96-774b-bcce-b302099a8057", name = "hello", contentHash = "h1", state = running, pid = 42, createdAtMs = 1700000000000, cpu = 1, memoryMb = 256)'
enc() { # kind file schema type text
    { printf "\\x$(printf %02x "$1")"; echo "$5" | capnp encode -I "$schema" "$3" "$4"; } > "$corpus/capnp_convert/$2"
}
enc 0 vmspec "$schema/common.capnp" VmSpec "$spec"
enc 1 publish-state "$tmp/seed.capnp" PublishParams "(commit = \"abc123\", generation = 3, intentHash = \"ih\", vmSpecs = [$spec, $spec])"
enc 2 assignment "$schema/master.capnp" Assignment "(workerId = \"w-1\", generation = 3, commit = \"abc123\", vms = [$spec])"
enc 3 vmstatus "$schema/common.capnp" VmStatus "$status"
enc 4 workerstatus "$schema/common.capnp" WorkerStatus '(workerId = "w-1", address = "127.0.0.1:6000", capacity = (cpu = 8, memoryMb = 16384), allocated = (cpu = 1, memoryMb = 256), labels = [(key = "zone", value = "a")], vmCount = 1, runDir = "/run/pcr", version = "0.1.0", uptimeMs = 5)'
enc 5 vminfo "$schema/worker.capnp" VmInfo "(status = $status, spec = $spec, metrics = (cpuPercent = 1.5, rssBytes = 1024), chState = \"Running\", socketPath = \"/run/pcr/hello.sock\", serialLogPath = \"/run/pcr/hello.log\")"
enc 6 logtail "$schema/worker.capnp" LogTail '(lines = ["booting", "login:"], truncated = true)'
enc 7 error "$schema/common.capnp" Error '(code = notFound, message = "no VM named web-0")'
enc 8 result-err "$schema/common.capnp" Result '(err = (code = invalidArgument, message = "bad spec"))'

# --- nar: real `nix-store --dump` output of a file, a symlink and a tree.
d=$tmp/tree
mkdir -p "$d/bin"
printf 'hello\n' > "$d/a.txt"
printf '#!/bin/sh\necho hi\n' > "$d/bin/run"
chmod +x "$d/bin/run"
ln -s bin/run "$d/link"
nix-store --dump "$d" > "$corpus/nar/tree.nar"
nix-store --dump "$d/a.txt" > "$corpus/nar/file.nar"
nix-store --dump "$d/link" > "$corpus/nar/symlink.nar"

# --- autonix_manifests: fixture files packed as the target reads them.
python3 - "$root" <<'PY'
import pathlib, re, sys
root = pathlib.Path(sys.argv[1])
src = (root / "fuzz/fuzz_targets/autonix_manifests.rs").read_text()
def table(name):
    body = re.search(r"const %s: &\[&str\] = &\[(.*?)\];" % name, src, re.S).group(1)
    return re.findall(r'"([^"]*)"', body)
names = table("CONTENT") + table("HEAD") + table("PRESENCE")
dirs = table("DIRS")
fx = root / "autonix/tests/fixtures"
seeds = {
    "rust-workspace": [("Cargo.toml", "", "rust-workspace/Cargo.toml"),
                       ("Cargo.toml", "crates/core", "rust-workspace/crates/core/Cargo.toml"),
                       ("rust-toolchain.toml", "", "rust-workspace/rust-toolchain.toml"),
                       ("Cargo.lock", "", "rust-workspace/Cargo.lock")],
    "node-npm": [("package.json", "", "node-managers/npm/package.json"),
                 ("package-lock.json", "", "node-managers/npm/package-lock.json")],
    "node-pnpm": [("package.json", "", "node-managers/pnpm/package.json"),
                  ("pnpm-workspace.yaml", "", "node-managers/pnpm/pnpm-workspace.yaml")],
    "python-poetry": [("pyproject.toml", "", "python-managers/poetry/pyproject.toml")],
    "python-uv": [("pyproject.toml", "", "python-managers/uv/pyproject.toml")],
    "go-workspace": [("go.work", "", "go-workspace/go.work"),
                     ("go.mod", "api", "go-workspace/api/go.mod")],
    "ruby": [("Gemfile", "", "rails-monorepo/Gemfile"),
             ("Gemfile.lock", "", "rails-monorepo/Gemfile.lock"),
             ("Procfile", "", "rails-monorepo/Procfile")],
    "maven": [("pom.xml", "", "java-builds/maven/pom.xml")],
    "gradle": [("build.gradle", "", "java-builds/gradle-plain/build.gradle"), ("settings.gradle", "", "java-builds/gradle-plain/settings.gradle")],
    "containers-tasks": [("docker-compose.yml", "", "rails-monorepo/docker-compose.yml"),
                         ("Dockerfile", "", "rails-monorepo/Dockerfile"),
                         ("Makefile", "", "rails-monorepo/Makefile"),
                         ("justfile", "", "rails-monorepo/justfile"),
                         ("Taskfile.yml", "", "rails-monorepo/Taskfile.yml")],
    "tool-versions": [("mise.toml", "", "rails-monorepo/mise.toml")],
}
out = root / "fuzz/corpus/autonix_manifests"
for seed, files in seeds.items():
    chunks = []
    for name, d, path in files:
        p = fx / path
        if not p.is_file():
            continue
        data = p.read_bytes().replace(b"\0", b"")[:16384]
        chunks.append(bytes([names.index(name), dirs.index(d)]) + data)
    if chunks:
        (out / seed).write_bytes(b"\0".join(chunks))
PY
echo "seeds written under $corpus"
