#!/usr/bin/env bash
# The boot-storm benchmark, from a fresh node (as root):
#   node set-up (packages, libvirtd, virtlogd, RabbitMQ), the test guest, the venv (+ matplotlib),
#   then tools/bench_boot_storm.py: per N, the raw-libvirt floor and the agent, alternately.
#
#   tools/bench-boot-storm.sh                      # sweep N = 1,5,10,20, 3 runs each, + accept rate
#   tools/bench-boot-storm.sh --sizes 20 --repeat 5 --accept-rate 0
#   tools/bench-boot-storm.sh --help
# Results: /var/lib/compute-agent/bench/boot-storm.{json,png} and one Chrome trace per agent run.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/setup-node.sh" >&2
"$top/tools/build-test-guest.sh" /var/lib/compute-agent/images >&2
venv=$("$top/tools/bootstrap.sh")
"$venv/bin/python" -c 'import matplotlib' 2>/dev/null ||
    "$venv/bin/pip" install -q -c "$top/constraints.txt" -r "$top/tools/bench-requirements.txt" >&2
exec "$venv/bin/python" "$top/tools/bench_boot_storm.py" --accept-rate 2000 "$@"
