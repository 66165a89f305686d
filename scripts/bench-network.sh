#!/usr/bin/env bash
# The whole-stack benchmarks: `annal serve` beside the UmaDB server, in the same run, on
# loopback. Installs UmaDB 0.7.8 from PyPI into a virtual environment under target/, builds
# annal in release mode, and passes its arguments on (`--quick`, `--workloads W1,W4`, ...).
#
#   bash scripts/bench-network.sh            # the full run behind BENCHMARKS.md
#   bash scripts/bench-network.sh --quick    # a smoke run of a minute or two
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${ANNAL_UMADB_VENV:-target/umadb-venv}
installed=$("$venv/bin/pip" show umadb 2>/dev/null || true)
if [[ "$installed" != *"Version: 0.7.8"* ]]; then
  echo "== installing umadb 0.7.8 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "umadb==0.7.8"
fi
echo "== building annal (release)"
cargo build --quiet --release -p annal --features bench
exec target/release/annal bench --network --umadb "$venv/bin/umadb" "$@"
