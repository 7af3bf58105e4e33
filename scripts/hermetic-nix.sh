# Sourced, not run: `hermetic_nix DIR` points this shell's nix at its own
# configuration in DIR (design §9): no daemon, no substituters, no network,
# an empty flake registry and no narinfo caching, so a run never depends on
# /etc/nix or on what an earlier run cached. Its XDG cache is DIR/xdg.
hermetic_nix() {
  local dir=$1
  mkdir -p "$dir/xdg"
  echo '{"flakes":[],"version":2}' >"$dir/registry.json"
  cat >"$dir/nix.conf" <<CONF
build-users-group =
sandbox = false
extra-sandbox-paths = /bin /usr /lib /lib64
substituters =
experimental-features = nix-command flakes
flake-registry = $dir/registry.json
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0
CONF
  export NIX_CONF_DIR=$dir XDG_CACHE_HOME=$dir/xdg
}
