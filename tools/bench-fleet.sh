#!/usr/bin/env bash
# The fleet simulation, from a fresh node (as root): node set-up, PostgreSQL for the conductor,
# the test guest's files (boot specs name them; the test driver runs nothing), the venv
# (+ matplotlib), then tools/bench_fleet.py.
#
#   tools/bench-fleet.sh                                   # K = 100 nodes x M = 20, W = 1 and 2
#   tools/bench-fleet.sh -K 100 -M 20 --workers 2 --restart-conductor --restart-db
#   tools/bench-fleet.sh --from-json FILE
# Results: docs/bench/fleet-kK-mM-SHAPE.{json,png} (logs in /var/lib/compute-agent/fleet)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/setup-node.sh" >&2
"$top/tools/setup-conductor-db.sh" >/dev/null
"$top/tools/build-test-guest.sh" /var/lib/compute-agent/images >&2
venv=$("$top/tools/bootstrap.sh")
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null ||
    "$venv/bin/pip" install -q -c "$top/constraints.txt" -r "$top/tools/bench-requirements.txt" >&2
# 100 agents: each holds a few files and sockets; RabbitMQ and libvirtd many connections.
ulimit -n 65536 2>/dev/null || true
exec "$venv/bin/python" "$top/tools/bench_fleet.py" --venv "$venv" "$@"
