#!/usr/bin/env bash
# Runs Procurator's Nix tests with Debian's nix, no nixpkgs, no network:
#   parse     nix-instantiate --parse over every .nix file of the repository
#   sync      example/hermetic/lib is a byte-identical copy of nix/lib's
#             builtins-only files
#   eval      nix/tests/eval.nix: shapes, defaults, the VmSpec contract
#   modules   nix/tests/modules.nix: the service modules' units (ExecStart,
#             credentials, firewall) rendered with a stand-in for nixpkgs' lib
#   errors    nix/tests/errors.nix: every validation error and its message
#   secrets   the modules' secrets generator run for real in a temp dir:
#             0700 directory, 0600 files, tokens kept across runs, and a
#             control-plane and CI API token files their daemons take
#   hermetic  example/hermetic in a temp git repo: eval the specs and check
#             them, build the closure, change one VM, break eval and build
#
#   nix/tests/run.sh              # every section
#   nix/tests/run.sh eval errors  # some
#
# Each run uses its own NIX_CONF_DIR (design §9) and XDG_CACHE_HOME in a
# temp dir (scripts/hermetic-nix.sh), so it ignores /etc/nix and never talks
# to a substituter.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/pcr-nix-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT

# shellcheck source=../../scripts/hermetic-nix.sh
source "$repo/scripts/hermetic-nix.sh"
hermetic_nix "$work/nix"
unset NIX_PATH

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }

sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(parse sync eval modules secrets errors hermetic)

# --- parse ------------------------------------------------------------------
run_parse() {
  local n=0 f
  while IFS= read -r -d '' f; do
    n=$((n + 1))
    if ! out=$(nix-instantiate --parse "$f" 2>&1 >/dev/null); then
      fail "parse ${f#"$repo"/}: $out"
    fi
  done < <(find "$repo" \( -name target -o -name .git -o -name node_modules \) -prune -o -name '*.nix' -type f -print0)
  [ "$n" -gt 0 ] || fail "parse: no .nix files found under $repo"
  pass "parse: $n .nix files"
}

# --- sync -------------------------------------------------------------------
run_sync() {
  local f
  for f in profile.nix spec.nix cluster.nix pure.nix; do
    if cmp -s "$repo/nix/lib/$f" "$repo/example/hermetic/lib/$f"; then
      pass "sync: example/hermetic/lib/$f = nix/lib/$f"
    else
      fail "sync: example/hermetic/lib/$f differs from nix/lib/$f (cp nix/lib/$f example/hermetic/lib/)"
    fi
  done
}

# --- eval, modules -----------------------------------------------------------
# A file of cases evaluates to { failed; passed; total; }; the section passes
# when nothing failed.
run_cases() {
  local section=$1 file=$2 out
  if ! out=$(nix-instantiate --eval --strict --json "$here/$file" 2>&1); then
    fail "$section: nix/tests/$file did not evaluate: $out"
    return
  fi
  case "$out" in
    *'"failed":[]'*) pass "$section: $out" ;;
    *) fail "$section: $out" ;;
  esac
}

# --- errors -----------------------------------------------------------------
# One process per case; cases run 4 at a time.
check_error_case() {
  local name=$1 msg=$2 err
  if nix-instantiate --eval --strict -E "(import $here/errors.nix).\"$name\".expr" >/dev/null 2>"$work/err-$name"; then
    echo "FAIL: errors: $name evaluated without an error (expected: $msg)" >&2
    return 1
  fi
  if ! grep -qF -- "$msg" "$work/err-$name"; then
    err=$(grep -m1 'error:' "$work/err-$name" || head -c 400 "$work/err-$name")
    echo "FAIL: errors: $name: expected \"$msg\", got: $err" >&2
    return 1
  fi
}
run_errors() {
  local cases name msg pids=() n=0 bad=0 pid
  cases=$(nix eval --raw --impure --expr "
    let e = import $here/errors.nix; in
    builtins.concatStringsSep \"\" (map (n: n + \"\t\" + e.\${n}.msg + \"\n\") (builtins.attrNames e))")
  while IFS=$'\t' read -r name msg; do
    [ -n "$name" ] || continue
    n=$((n + 1))
    check_error_case "$name" "$msg" &
    pids+=($!)
    if [ ${#pids[@]} -ge 4 ]; then
      wait "${pids[0]}" || bad=$((bad + 1))
      pids=("${pids[@]:1}")
    fi
  done <<< "$cases"
  for pid in "${pids[@]}"; do wait "$pid" || bad=$((bad + 1)); done
  if [ "$bad" -gt 0 ]; then
    fail "errors: $bad of $n cases"
  else
    pass "errors: $n cases fail with their message"
  fi
}

# --- hermetic ---------------------------------------------------------------
run_hermetic() {
  local dir="$work/hermetic" out specs closure p root h1 h2 name
  cp -r "$repo/example/hermetic" "$dir"
  git -C "$dir" init -q
  git -C "$dir" add -A
  git -C "$dir" -c user.name=test -c user.email=test@localhost commit -qm "hermetic example"

  if ! nix eval --json "$dir#procurator.vmSpecs" > "$work/specs.json" 2>"$work/eval.err"; then
    fail "hermetic: nix eval of procurator.vmSpecs: $(cat "$work/eval.err")"
    return
  fi
  if out=$(nix-instantiate --eval --strict --arg specsFile "$work/specs.json" "$here/check-specs.nix" 2>&1); then
    pass "hermetic: $out valid VmSpecs"
  else
    fail "hermetic: spec JSON invalid: $out"
  fi
  for name in web-0 web-1 db-0; do
    grep -q "\"name\":\"$name\"" "$work/specs.json" || fail "hermetic: no VM $name in $(cat "$work/specs.json")"
  done

  if ! out=$(nix build --json --no-link "$dir#procurator.closure" 2>&1); then
    fail "hermetic: nix build of procurator.closure: $out"
    return
  fi
  closure=$(nix eval --raw "$dir#procurator.closure.outPath")
  nix-store -qR "$closure" > "$work/closure.txt"
  specs=$(nix eval --raw --impure --expr "
    builtins.concatStringsSep \"\n\" (builtins.concatMap
      (s: builtins.filter (p: p != \"\") [ s.toplevel s.kernelPath s.initrdPath s.diskImagePath ])
      (builtins.fromJSON (builtins.readFile $work/specs.json)))")
  local missing=0
  while IFS= read -r p; do
    root=$(echo "$p" | cut -d/ -f1-4)
    [ -e "$p" ] || { fail "hermetic: $p was not built"; missing=1; }
    grep -qxF "$root" "$work/closure.txt" || { fail "hermetic: $root is not in the closure of $closure"; missing=1; }
  done <<< "$specs"
  [ "$missing" -eq 1 ] || pass "hermetic: closure $closure holds every spec path"

  # Changing one line changes exactly one VM.
  hash_of() { nix eval --raw "$dir#procurator.vmSpecs" --apply "l: (builtins.head (builtins.filter (s: s.name == \"$1\") l)).contentHash" 2>/dev/null; }
  local before_web0 before_web1 before_db0
  before_web0=$(hash_of web-0); before_web1=$(hash_of web-1); before_db0=$(hash_of db-0)
  sed -i 's/hello from db v1/hello from db v2/' "$dir/vms.nix"
  if [ "$(hash_of db-0)" != "$before_db0" ] && [ "$(hash_of web-0)" = "$before_web0" ] && [ "$(hash_of web-1)" = "$before_web1" ]; then
    pass "hermetic: editing db's message changes db-0's contentHash only"
  else
    fail "hermetic: editing db's message did not change exactly db-0"
  fi
  if out=$(nix build --json --no-link "$dir#procurator.closure" 2>&1); then
    pass "hermetic: the changed cluster builds"
  else
    fail "hermetic: the changed cluster does not build: $out"
  fi

  # An invalid setting is an evaluation error naming it.
  cp "$dir/vms.nix" "$work/vms.nix.good"
  sed -i '0,/cpu = 1;/s//cpu = 0;/' "$dir/vms.nix"
  if out=$(nix eval --json "$dir#procurator.vmSpecs" 2>&1); then
    fail "hermetic: cpu = 0 evaluated: $out"
  else
    case "$out" in
      *"mkVmProfile: cpu must be an integer between 1 and 256, got 0"*) pass "hermetic: cpu = 0 is an evaluation error" ;;
      *) fail "hermetic: cpu = 0 failed with an unexpected message: $out" ;;
    esac
  fi
  cp "$work/vms.nix.good" "$dir/vms.nix"

  # failBuild = true evaluates but fails to build.
  sed -i '0,/failBuild = false;/s//failBuild = true;/' "$dir/vms.nix"
  if ! nix eval --json "$dir#procurator.vmSpecs" >/dev/null 2>&1; then
    fail "hermetic: failBuild = true should still evaluate"
  elif out=$(nix build --json --no-link "$dir#procurator.closure" 2>&1); then
    fail "hermetic: failBuild = true built"
  else
    case "$out" in
      *"build failed on purpose"*) pass "hermetic: failBuild = true is a build failure" ;;
      *) fail "hermetic: failBuild = true failed with an unexpected message: $out" ;;
    esac
  fi
  cp "$work/vms.nix.good" "$dir/vms.nix"
}

# --- secrets ----------------------------------------------------------------
# service-common.nix's generator (what every unit runs first), pointed at a
# temp dir instead of /var/lib/procurator-secrets.
run_secrets() {
  local dir="$work/secrets" script mode t1 t2 bad=0
  script=$(nix-instantiate --eval --json -E "(import $repo/nix/modules/service-common.nix { lib = { }; }).secretsScript" | jq -r .)
  script=${script//\/var\/lib\/procurator-secrets/$dir}
  for run in 1 2; do
    if ! out=$(WORKER_ID=w-7 bash -c "$script" 2>&1); then
      fail "secrets: run $run failed: $out"
      return
    fi
    [ "$run" = 1 ] && t1=$(cat "$dir/admin-token")
  done
  t2=$(cat "$dir/admin-token")
  [ "$t1" = "$t2" ] || { fail "secrets: a second run replaced the admin token"; bad=1; }
  mode=$(stat -c %a "$dir")
  [ "$mode" = 700 ] || { fail "secrets: the directory is $mode, not 700"; bad=1; }
  for f in admin-token ci-token reader-token worker-token upload-token hook-secret control-plane-tokens ci-api-tokens worker-tokens; do
    mode=$(stat -c %a "$dir/$f" 2>/dev/null || echo missing)
    [ "$mode" = 600 ] || { fail "secrets: $f is $mode, not 600"; bad=1; }
  done
  [ "$(wc -c < "$dir/admin-token")" -ge 33 ] || { fail "secrets: the admin token is short"; bad=1; }
  grep -qx "worker:w-7 $(cat "$dir/worker-token")" "$dir/control-plane-tokens" \
    || { fail "secrets: the control-plane token file lacks the worker's line"; bad=1; }
  grep -qx "admin $t1" "$dir/worker-tokens" || { fail "secrets: worker-tokens lacks the admin token"; bad=1; }
  # ci_service's read API: repohub sends the reader token (reader-token).
  [ "$(cat "$dir/ci-api-tokens")" = "$(printf 'admin %s\nreader %s' "$t1" "$(cat "$dir/reader-token")")" ] \
    || { fail "secrets: ci-api-tokens is not the admin and reader tokens: $(cat "$dir/ci-api-tokens")"; bad=1; }
  # The daemons themselves parse the generated files (when they are built):
  # the control plane its token file, ci_service its read API's.
  local bin="$repo/target/debug"
  [ -n "${CARGO_TARGET_DIR:-}" ] && bin="$CARGO_TARGET_DIR/debug"
  takes() {
    local what=$1 exe=$bin/$2 pid i
    shift 2
    [ -x "$exe" ] || return 0
    "$exe" --listen 127.0.0.1:0 "$@" >"$work/$what.out" 2>&1 &
    pid=$!
    for i in $(seq 50); do grep -qs "^listening on " "$work/$what.out" && break; sleep 0.1; done
    grep -q '^listening on ' "$work/$what.out" || { fail "secrets: $what refused the generated file: $(cat "$work/$what.out")"; bad=1; }
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  }
  takes control_plane control_plane --token-file "$dir/control-plane-tokens"
  takes ci_service ci_service --data-dir "$work/ci-data" --api-token-file "$dir/ci-api-tokens" \
    --hook-secret-file "$dir/hook-secret"
  [ "$bad" = 1 ] || pass "secrets: 0700 dir, 0600 files, kept across runs, token files the control plane and ci_service take"
}

start=$(date +%s)
for s in "${sections[@]}"; do
  case "$s" in
    parse) run_parse ;;
    sync) run_sync ;;
    eval) run_cases eval eval.nix ;;
    modules) run_cases modules modules.nix ;;
    secrets) run_secrets ;;
    errors) run_errors ;;
    hermetic) run_hermetic ;;
    *) fail "unknown section $s (parse sync eval modules secrets errors hermetic)" ;;
  esac
done
echo "nix tests: ${sections[*]}: $failures failure(s) in $(( $(date +%s) - start )) s"
[ "$failures" -eq 0 ]
