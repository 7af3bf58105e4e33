#!/usr/bin/env bash
# The README's main command: from a fresh machine to VMs running from a
# `git push`. Installs what is missing, builds, starts the binary cache, the
# control plane, two workers and ci_service, creates two bare repositories
# with the CI hook from example/hermetic -- the deploy repositories of two
# projects, team-a and team-b, both with a VM called web-0 -- pushes both and
# shows progress until every VM of both projects runs. All state lives under
# .state/demo (wiped at each start); Ctrl-C stops everything, VMs included.
#
# Environment knobs:
#   PCR_DEMO_DIR            state directory (default: <repo>/.state/demo)
#   PCR_DEMO_EXIT=1         stop everything once the VMs run (smoke test)
#   PCR_DEMO_CH=PATH        force a VMM binary (cloud-hypervisor or ch-sim)
set -euo pipefail
# Everything the demo writes (tokens, keys, logs, disks) is its user's only.
umask 077

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${PCR_DEMO_DIR:-$ROOT/.state/demo}
BIN=$ROOT/target/debug
CACHE_ADDR=127.0.0.1:5000
CP_ADDR=127.0.0.1:7000
CI_ADDR=127.0.0.1:7100
# host-a listens on pcr-worker-test's default address (the worker's own
# default --listen), so `pcr-worker-test list-vms` needs no --worker.
worker_addr() { case $1 in host-a) echo 127.0.0.1:6000 ;; *) echo 127.0.0.1:6001 ;; esac; }

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

pids=()
cleanup() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    say "stopping ${#pids[@]} processes"
    # Reverse start order: CI first, the cache last. Workers stop their VMs
    # (--stop-vms-on-exit).
    for ((i=${#pids[@]}-1; i>=0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
  fi
  echo "state kept in $STATE"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts "$name" with its output in logs/$name.log and waits for the
# `listening on ADDR` line every service prints.
start() {
  local name=$1; shift
  "$@" >"$STATE/logs/$name.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do
    if grep -q '^listening on ' "$STATE/logs/$name.log" 2>/dev/null; then
      printf '    %-14s %s (log: %s)\n' "$name" "$(grep -m1 '^listening on ' "$STATE/logs/$name.log" | cut -d' ' -f3)" "$STATE/logs/$name.log"
      return 0
    fi
    kill -0 "${pids[-1]}" 2>/dev/null || { tail -20 "$STATE/logs/$name.log" >&2; die "$name exited at start"; }
    sleep 0.1
  done
  die "$name did not start within 30 s (see $STATE/logs/$name.log)"
}

for addr in $CACHE_ADDR $CP_ADDR $CI_ADDR; do
  if (exec 3<>/dev/tcp/${addr%:*}/${addr#*:}) 2>/dev/null; then
    die "$addr is already in use (another demo running?); stop it first"
  fi
done

say "installing missing system packages"
PCR_SKIP_BROWSER=${PCR_SKIP_BROWSER:-1} "$ROOT/scripts/install-deps.sh"
command -v curl >/dev/null || die "curl is needed to follow the CI log"

say "building (cargo build --workspace --bins)"
(cd "$ROOT" && cargo build --workspace --bins --quiet)

say "fresh state in $STATE"
rm -rf "$STATE"
mkdir -p "$STATE"/{logs,nix,cache,repos,hosts,secrets}
chmod 700 "$STATE"

# Hermetic nix (design §9): no daemon, no substituters, no network.
# shellcheck source=hermetic-nix.sh
source "$ROOT/scripts/hermetic-nix.sh"
hermetic_nix "$STATE/nix"

# Which VMM: real cloud-hypervisor with KVM, else the simulator, said plainly.
if [ -n "${PCR_DEMO_CH:-}" ]; then
  CH=$PCR_DEMO_CH
elif command -v cloud-hypervisor >/dev/null && [ -w /dev/kvm ]; then
  CH=$(command -v cloud-hypervisor)
else
  CH=$BIN/ch-sim
fi
if [ "$(basename "$CH")" = ch-sim ]; then
  say "VMM: ch-sim, the cloud-hypervisor simulator (cloud-hypervisor or /dev/kvm not available): VMs are simulated"
else
  say "VMM: $CH with /dev/kvm"
fi

say "starting the cache, the control plane, two workers and ci_service"
# Every service checks tokens: one random secret per role, each in its own
# 0600 file under $STATE/secrets (mode 0700).
SECRETS=$STATE/secrets
new_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
ADMIN_TOKEN=$(new_token)
CI_TOKEN=$(new_token)
printf '%s\n' "$ADMIN_TOKEN" >"$SECRETS/admin-token"
printf '%s\n' "$CI_TOKEN" >"$SECRETS/ci-token"
new_token >"$SECRETS/hook-secret"
{
  printf 'admin %s\nci %s\n' "$ADMIN_TOKEN" "$CI_TOKEN"
  for host in host-a host-b; do
    t=$(new_token)
    printf '%s\n' "$t" >"$SECRETS/worker-$host-token"
    printf 'worker:%s %s\n' "$host" "$t"
  done
} >"$SECRETS/control-plane-tokens"
# The workers' own RPC takes the same admin token.
printf 'admin %s\n' "$ADMIN_TOKEN" >"$SECRETS/worker-tokens"
# The CLIs (pcr, pcr-test, pcr-worker-test) read their token from here.
export PCR_TOKEN_FILE=$SECRETS/admin-token
"$BIN/cache" keygen demo-cache-1 --out-dir "$STATE/cache/key" >/dev/null
PUBLIC_KEY=$(cat "$STATE/cache/key/public-key")
new_token >"$STATE/cache/upload-token"
start cache "$BIN/cache" serve --listen $CACHE_ADDR --data-dir "$STATE/cache/data" \
  --key-file "$STATE/cache/key/secret-key" --upload-token-file "$STATE/cache/upload-token"
start control_plane "$BIN/control_plane" --listen $CP_ADDR --startup-grace-ms 500 \
  --token-file "$SECRETS/control-plane-tokens" --state-dir "$STATE/control-plane"
for host in host-a host-b; do
  start "worker-$host" "$BIN/worker" --listen "$(worker_addr $host)" --worker-id $host \
    --cpu 4 --memory-mb 4096 --ch-binary "$CH" \
    --run-dir "$STATE/hosts/$host/run" --store-root "$STATE/hosts/$host/store" \
    --closure-source "http://$CACHE_ADDR" --cache-public-key "$PUBLIC_KEY" \
    --control-plane $CP_ADDR --stop-vms-on-exit \
    --token-file "$SECRETS/worker-tokens" --cluster-token-file "$SECRETS/worker-$host-token"
done
# Deploy rights: each project's deploy repository and ref (a push anywhere
# else builds but ends built-not-deployed).
PROJECTS="team-a team-b"
for p in $PROJECTS; do
  git init -q --bare -b main "$STATE/repos/$p.git"
  printf '[[deploy]]\nrepo = "%s"\nproject = "%s"\nref = "refs/heads/main"\n\n' \
    "$(realpath "$STATE/repos/$p.git")" "$p" >>"$STATE/projects.toml"
done
start ci_service "$BIN/ci_service" --listen $CI_ADDR --data-dir "$STATE/ci" \
  --cache "http://$CACHE_ADDR" --cache-token-file "$STATE/cache/upload-token" \
  --control-plane $CP_ADDR --control-plane-token-file "$SECRETS/ci-token" \
  --nix-conf-dir "$STATE/nix" --hook-secret-file "$SECRETS/hook-secret" \
  --projects "$STATE/projects.toml"

for p in $PROJECTS; do
  say "project $p: $STATE/repos/$p.git with the CI hook, pushing example/hermetic"
  "$BIN/ci_service" install-hook --repo "$STATE/repos/$p.git" --url "http://$CI_ADDR" \
    --secret-file "$SECRETS/hook-secret" >/dev/null
  cp -r "$ROOT/example/hermetic" "$STATE/work-$p"
  g() { git -C "$STATE/work-$p" -c user.name=demo -c user.email=demo@localhost "$@"; }
  # Both projects run web-0, web-1 and db-0; team-b's db says so.
  sed -i "s/hello from db v1/hello from $p's db v1/" "$STATE/work-$p/vms.nix"
  g init -q -b main
  g add -A
  g commit -q -m "hermetic example cluster of $p"
  g remote add origin "$STATE/repos/$p.git"
  g push -u origin main 2>&1 | sed 's/^/    /'

  say "project $p: CI job log (following)"
  job=$(curl -fsS "http://$CI_ADDR/jobs?limit=1" | sed -n 's/.*"id":\([0-9]*\).*/\1/p' | head -1)
  [ -n "$job" ] || die "no CI job was created (see $STATE/logs/ci_service.log)"
  curl -fsSN "http://$CI_ADDR/jobs/$job/log?follow=1" | sed 's/^/    /'
  state=$(curl -fsS "http://$CI_ADDR/jobs/$job" | sed -n 's/.*"state":"\([a-z-]*\)".*/\1/p')
  [ "$state" = succeeded ] || die "CI job $job $state"
done

say "waiting for the workers to converge (both projects)"
last=
for _ in $(seq 600); do
  json=$("$BIN/pcr" --control-plane $CP_ADDR --json status 2>/dev/null || true)
  pct=$(printf '%s' "$json" | grep -o '"convergencePercent": *[0-9.]*' | grep -o '[0-9.]*$' || true)
  if [ "$pct" != "$last" ]; then LC_ALL=C printf '    convergence: %.0f%%\n' "${pct:-0}"; last=$pct; fi
  gens=$(printf '%s' "$json" | grep -c '"project": *"team-' || true)
  case "$pct" in 100|100.0) [ "$gens" -ge 2 ] && break ;; esac
  sleep 0.2
done
"$BIN/pcr" --control-plane $CP_ADDR status | sed 's/^/    /'
say "projects"
"$BIN/pcr" --control-plane $CP_ADDR projects | sed 's/^/    /'
say "VMs of both projects (two web-0s, side by side)"
"$BIN/pcr" --control-plane $CP_ADDR vms | sed 's/^/    /'
for p in $PROJECTS; do
  "$BIN/pcr" --control-plane $CP_ADDR --json status --project "$p" \
    | grep -q '"convergencePercent": *100' || die "project $p did not converge"
done

# Each VM's guest (example/hermetic/guest/pvh.S) prints one line naming the
# VM on its serial console; the worker keeps the console (`logs`). ch-sim
# writes the same line for that kernel, so both VMMs show it.
say "each VM's serial console says"
for host in host-a host-b; do
  addr=$(grep -m1 '^listening on ' "$STATE/logs/worker-$host.log" | cut -d' ' -f3)
  wt() { "$BIN/pcr-worker-test" --worker "$addr" "$@"; }
  for id in $(wt --json list-vms | grep -o '"id": *"[^"]*"' | cut -d'"' -f4); do
    proj=$(wt --json info "$id" 2>/dev/null | grep -m1 -o '"project": *"[^"]*"' | cut -d'"' -f4 || true)
    line=
    for _ in $(seq 50); do
      line=$(wt logs "$id" | grep -m1 '^pcr-guest: ' || true)
      [ -n "$line" ] && break
      sleep 0.1
    done
    printf '    %s %s/%s: %s\n' "$host" "${proj:-?}" "$id" "${line:-(no guest line yet)}"
  done
done

cat <<NEXT

Every VM of both projects runs. Try the loop yourself:

  cd $STATE/work-team-a
  sed -i 's/db v1/db v2/' vms.nix
  git commit -am "db v2" && git push          # only team-a's db-0 is replaced

  export PCR_TOKEN_FILE=$SECRETS/admin-token   # every service checks tokens
  $BIN/pcr status                 # generations, convergence, VMs, workers
  $BIN/pcr projects               # quota, usage, generation per project
  $BIN/pcr vms --project team-b   # one project's VMs
  $BIN/pcr-worker-test list-vms   # host-a's VMs (--worker 127.0.0.1:6001: host-b's)
  curl -s http://$CI_ADDR/jobs    # CI jobs; /jobs/N/log?follow=1 follows one
  logs: $STATE/logs/

Ctrl-C stops everything.
NEXT

if [ "${PCR_DEMO_EXIT:-0}" = 1 ]; then exit 0; fi
wait
