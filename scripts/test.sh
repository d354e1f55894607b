#!/usr/bin/env bash
# Runs everything CI checks, on a fresh machine as on a developer's: installs what is missing,
# then formatting, lints, and the whole test suite against real ipykernel processes.
#
#   scripts/test.sh            the full suite (what CI runs)
#   scripts/test.sh --quick    skip fmt and clippy
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1

say() { printf '\n==> %s\n' "$*"; }

# A Python 3 with venv is the one thing outside cargo that kernels need.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  say "Installing Python 3 with venv (apt)"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv
  else
    echo "error: python3 with the venv module is missing; install python3 and python3-venv" >&2
    exit 1
  fi
fi

# The node builds kernels' network namespaces over netlink and needs no program for it; the
# egress end-to-end test's small internet (tests/support_netns) is made with `ip netns`.
if ! command -v ip >/dev/null; then
  say "Installing iproute2 (apt) for the egress test's network namespaces"
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
  else
    echo "warning: ip is missing and cannot be installed here; the egress end-to-end test will say it skips" >&2
  fi
fi

if [[ $quick -eq 0 ]]; then
  say "cargo fmt --check"
  cargo fmt --all -- --check
  say "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# Make the managed Python environment once, up front, so parallel tests share it.
say "Managed Python environment for kernels"
cargo run --quiet --locked -- python

say "Tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "(cargo-nextest not found; using cargo test)"
  cargo test --workspace --locked --no-fail-fast
fi
