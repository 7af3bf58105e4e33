#!/bin/sh
# Demo: a worker driving ch-sim (the cloud-hypervisor stand-in), one VM
# created from examples/vm-spec.json through pcr-worker-test.
# Run from the repository root: sh worker/examples/demo.sh
set -eu
cargo build -q -p worker -p cli
BIN=target/debug
DEMO=$(mktemp -d)
trap 'kill "$WORKER" 2>/dev/null; wait "$WORKER" 2>/dev/null; rm -rf "$DEMO"' EXIT

# The spec's store paths, under a store root (what `nix copy --to DIR` makes).
STORE="$DEMO/store/nix/store"
mkdir -p "$STORE/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system" \
         "$STORE/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1" \
         "$STORE/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-initrd" \
         "$STORE/3c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk"
echo kernel > "$STORE/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage"
echo initrd > "$STORE/2c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-initrd/initrd"
truncate -s 64M "$STORE/3c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-disk/disk.raw"

# --stop-vms-on-exit: the demo leaves no ch-sim behind.
"$BIN/worker" --listen 127.0.0.1:6000 --ch-binary "$BIN/ch-sim" \
  --run-dir "$DEMO/run" --store-root "$DEMO/store" --stop-vms-on-exit \
  > "$DEMO/worker.out" 2> "$DEMO/worker.log" &
WORKER=$!
until grep -q "listening on" "$DEMO/worker.out" 2>/dev/null; do sleep 0.1; done

PCR="$BIN/pcr-worker-test --addr 127.0.0.1:6000"
$PCR read
ID=$($PCR --json create-vm --spec worker/examples/vm-spec.json | sed -n 's/.*"id": "\(.*\)".*/\1/p' | head -1)
$PCR list-vms
$PCR pause "$ID" && $PCR resume "$ID"
sleep 1.2
$PCR logs "$ID"
$PCR info "$ID"
$PCR delete-vm "$ID"
$PCR list-vms
