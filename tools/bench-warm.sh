#!/usr/bin/env bash
# The warm-boot benchmark, from a fresh node (as root): node set-up, the test guest, the venv
# (+ matplotlib), then tools/bench_warm.py: per N, cold floor, cold agent, raw-restore floor,
# warm agent, raw-resume floor, hot agent and the resume floor after one RPC, one after the
# other (about 40 minutes for N = 1,10,20 x 3; --kinds runs a subset).
#
#   tools/bench-warm.sh                      # N = 1,10,20, 3 runs each
#   tools/bench-warm.sh --sizes 20 --repeat 1
# Results: /var/lib/compute-agent/bench/warm-boot.{json,png}
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/setup-node.sh" >&2
"$top/tools/build-test-guest.sh" /var/lib/compute-agent/images >&2
venv=$("$top/tools/bootstrap.sh")
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null ||
    "$venv/bin/pip" install -q -c "$top/constraints.txt" -r "$top/tools/bench-requirements.txt" >&2
exec "$venv/bin/python" "$top/tools/bench_warm.py" "$@"
