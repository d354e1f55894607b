#!/usr/bin/env bash
# Makes (or checks) the Python environment the Jupyter peer benchmark runs in
# (shared/peers/jupyter_peer_bench.py), and prints its interpreter's path on the last line.
#
#   scripts/peer-venv.sh                 the default place, target/peer-venv
#   scripts/peer-venv.sh DIR             somewhere else
#
# `cargo bench --bench exec_rtt` runs this when the environment is missing. Progress goes to
# stderr; an environment that already imports everything is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${1:-target/peer-venv}"
python="$venv/bin/python"
packages=(ipykernel==7.4.0 jupyter_client jupyter_kernel_gateway websocket-client)
check='import ipykernel, jupyter_client, kernel_gateway, websocket'

say() { printf 'peer-venv: %s\n' "$*" >&2; }

if [[ -x "$python" ]] && "$python" -c "$check" >/dev/null 2>&1; then
  echo "$python"
  exit 0
fi

if ! command -v python3 >/dev/null; then
  say "error: python3 is not installed; install python3 and python3-venv"
  exit 1
fi
if [[ ! -x "$python" ]]; then
  say "creating a virtualenv in $venv (python3 -m venv)"
  python3 -m venv "$venv"
fi
say "installing ${packages[*]} (pip; this takes a minute the first time)"
"$python" -m pip install --quiet --disable-pip-version-check "${packages[@]}" >&2
"$python" -c "$check"
say "ready: $python"
echo "$python"
