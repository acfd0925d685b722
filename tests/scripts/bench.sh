#!/usr/bin/env bash
# Side-by-side benchmark of the running agent and its peers on this machine. See bench.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 tests/scripts/bench.py "$@"
