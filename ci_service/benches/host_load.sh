#!/bin/bash
# Load on one real host: one `worker` running N ch-sim VMs (default 200)
# against a release control plane; prints time to converge, ch-sim and
# worker RSS, and the worker's warnings (where it breaks). Needs
# `cargo build -p worker -p cli` and `cargo build --release -p control_plane`.
#   ci_service/benches/host_load.sh 1000
set -u
N=${1:-200}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$ROOT/target/debug
R=$ROOT/target/release
D=$(mktemp -d /tmp/pcr-host-load.XXXX)
K=$D/store/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1
mkdir -p $K $D/store/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system $D/specs
echo kernel > $K/bzImage
for i in $(seq 0 $((N-1))); do
  printf '{"name":"vm-%d","toplevel":"/nix/store/0c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-nixos-system","kernelPath":"/nix/store/1c0ykmjh8n0jm6dbb6r6d5mp5bmk1s9d-linux-6.1/bzImage","cmdline":"console=ttyS0","cpu":1,"memoryMb":128,"contentHash":"h1"}' $i > $D/specs/vm-$i.json
done
$R/control_plane --listen 127.0.0.1:0 --startup-grace-ms 0 > $D/cp.out 2>$D/cp.err &
CPP=$!
sleep 0.5
CP=$(head -1 $D/cp.out | sed 's/listening on //')
RUST_LOG=warn $B/worker --listen 127.0.0.1:0 --worker-id big --cpu 100000 --memory-mb 100000000 --ch-binary $B/ch-sim --run-dir $D/run --store-root $D/store --control-plane $CP > $D/w.out 2>$D/w.err &
WP=$!
sleep 1
T0=$(date +%s.%N)
$B/pcr-test --control-plane $CP publish-state --commit c1 --generation 1 --specs $D/specs
while true; do
  P=$($B/pcr --control-plane $CP --json status 2>/dev/null | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["convergencePercent"], sum(1 for v in s["vms"] if v.get("state")=="running" or v.get("state")=="Running"))' 2>/dev/null)
  NOW=$(date +%s.%N)
  EL=$(python3 -c "print(round($NOW-$T0,1))")
  case "$P" in 100.0*) echo "converged $N VMs in ${EL}s ($P)"; break;; esac
  if python3 -c "import sys; sys.exit(0 if $NOW-$T0 > 240 else 1)"; then echo "BROKE: not converged after 240 s: $P"; break; fi
  sleep 1
done
CHS=$(pgrep -f "path=$D/run/" | wc -l)
RSS=$(for p in $(pgrep -f "path=$D/run/"); do awk '/VmRSS/{print $2}' /proc/$p/status; done | awk '{s+=$1} END {print s/1024}')
WRSS=$(awk '/VmRSS/{print $2/1024}' /proc/$WP/status)
echo "ch-sim processes: $CHS, their total RSS ${RSS} MiB ($(python3 -c "print(round($RSS/max($CHS,1),2))") MiB each); worker RSS ${WRSS} MiB"
grep -c "WARN\|ERROR" $D/w.err | sed 's/^/worker warnings+errors: /'
grep "ERROR\|WARN" $D/w.err | head -3 | cut -c1-250
kill $WP $CPP
for p in $(pgrep -f "path=$D/run/"); do kill -9 $p; done
rm -rf $D
