#!/usr/bin/env bash
# The functional tests as CI runs them (tools/run-tests.sh calls this once the node, the guests
# and the tox env are there): the whole suite under the default runtime (eventlet), and the
# tests marked both_runtimes (boot, readiness, the main warm and hot ones, restarts) again
# under [DEFAULT] runtime = threading.
#
# The suite mostly waits (guests booting under TCG, processes restarting): one run keeps about
# 40 % of this machine's two cores busy. So three lanes run side by side, each its own pytest
# process with its own nodes (agent, conductor, broker user, bridge, directories):
#   eventlet-1   crash points, warm, readiness
#   eventlet-2   every other file (the real Debian guest among them)
#   threading    the tests marked both_runtimes
# They share libvirtd and RabbitMQ, so the tests marked "disruptive" (they stop one of them for
# the whole machine) run afterwards, alone, in both runtimes.
#   tools/run-functional.sh [tox env dir]      default: .tox/functional
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
py=${1:-$top/.tox/functional}/bin/python
cd "$top"
export PYTHONDONTWRITEBYTECODE=1
t=tests/functional
logs=$(mktemp -d /var/tmp/compute-agent-lanes.XXXXXX)

# lane NAME RUNTIME PYTEST-ARGS...: one pytest run, its output in $logs/NAME.log
lane() {
    local name=$1 runtime=$2
    shift 2
    COMPUTE_AGENT_RUNTIME=$runtime "$py" -m pytest -q -p no:cacheprovider -ra --durations=8 \
        --basetemp="/var/tmp/compute-agent-functional-$name" "$@" >"$logs/$name.log" 2>&1
}

show() {   # show NAME RC
    echo "== functional lane $1: $( [ "$2" = 0 ] && echo passed || echo "FAILED (rc $2)")"
    cat "$logs/$1.log"
}

start=$(date +%s)
mine=(test_crash_points.py test_warm.py test_readiness.py)
lane eventlet-1 eventlet -m 'not disruptive' "${mine[@]/#/$t/}" & p1=$!
lane eventlet-2 eventlet -m 'not disruptive' $t "${mine[@]/#/--ignore=$t/}" & p2=$!
lane threading threading -m 'both_runtimes and not disruptive' $t & p3=$!
rc=0
for lane_pid in "eventlet-1 $p1" "eventlet-2 $p2" "threading $p3"; do
    set -- $lane_pid
    wait "$2"; code=$?
    show "$1" "$code"
    [ "$code" = 0 ] || rc=1
done
echo "== lanes done in $(( $(date +%s) - start )) s"
lane disruptive-eventlet eventlet -m disruptive $t; code=$?
show disruptive-eventlet "$code"; [ "$code" = 0 ] || rc=1
lane disruptive-threading threading -m 'both_runtimes and disruptive' $t; code=$?
show disruptive-threading "$code"; [ "$code" = 0 ] || rc=1
echo "== functional tests $( [ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
rm -rf "$logs"
exit $rc
