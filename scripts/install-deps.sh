#!/usr/bin/env bash
# Installs the system packages Procurator's build, demo and tests need.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

need=()
command -v capnp >/dev/null 2>&1 || need+=(capnproto)
command -v nix >/dev/null 2>&1 || need+=(nix-bin)
command -v git >/dev/null 2>&1 || need+=(git)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v jq >/dev/null 2>&1 || need+=(jq)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
# ci_service evaluates pushed flakes in a bubblewrap jail.
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
if [ "${PCR_SKIP_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
fi
command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
# The hermetic example's guest kernel is assembled by the host's binutils.
[ -x /usr/bin/as ] && [ -x /usr/bin/ld ] || need+=(binutils)
# Tests: qemu-img checks the worker's qcow2 overlays; QEMU boots the guest
# kernel for real (TCG, no KVM needed). PCR_SKIP_QEMU=1 leaves QEMU out
# (those tests then print SKIP).
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
if [ "${PCR_SKIP_QEMU:-0}" != 1 ]; then
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
fi
# Worker egress (and its tests, in network namespaces as root): nft, ip,
# and dnsmasq as the tests' stand-in for the internet's DNS.
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
command -v cargo-nextest >/dev/null 2>&1 || command -v cargo >/dev/null 2>&1 || {
  echo "install-deps: a Rust toolchain (cargo) is required" >&2; exit 1; }

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
