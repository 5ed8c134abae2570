#!/usr/bin/env bash
# The functional tests as CI runs them (tools/run-tests.sh calls this once the node, the guests
# and the tox env are there): the whole suite under the default runtime (eventlet), and the
# tests marked both_runtimes (boot, readiness, the main warm and hot ones, restarts) again
# under [DEFAULT] runtime = threading.
#
# The suite mostly waits (guests booting under TCG, processes restarting): one run keeps about
# 40 % of this machine's two cores busy. So three lanes run side by side, each pytest process
# with its own nodes (agent, conductor, broker user, bridge, directories), balanced by what
# they took in CI (the real Debian guest alone takes ~5 minutes):
#   a   eventlet: the real guest first, then warm and readiness
#   b   eventlet: crash points, lifecycle, faults
#   c   threading: the tests marked both_runtimes; then eventlet: every other file
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

# run NAME RUNTIME PYTEST-ARGS...: one pytest run; its output in $logs/NAME.log, its status
# in $logs/NAME.rc
run() {
    local name=$1 runtime=$2
    shift 2
    COMPUTE_AGENT_RUNTIME=$runtime "$py" -m pytest -q -p no:cacheprovider -ra --durations=8 \
        --basetemp="/var/tmp/compute-agent-functional-$name" "$@" >"$logs/$name.log" 2>&1
    echo $? >"$logs/$name.rc"
}

rc=0
show() {   # show NAME...: each run's verdict and output
    local name code
    for name in "$@"; do
        code=$(cat "$logs/$name.rc" 2>/dev/null || echo missing)
        echo "== functional $name: $( [ "$code" = 0 ] && echo passed || echo "FAILED ($code)")"
        cat "$logs/$name.log" 2>/dev/null
        [ "$code" = 0 ] || rc=1
    done
}

start=$(date +%s)
a=(test_real_guest.py test_warm.py test_readiness.py)
b=(test_crash_points.py test_lifecycle.py test_faults.py)
run a-eventlet eventlet -m 'not disruptive' "${a[@]/#/$t/}" &
run b-eventlet eventlet -m 'not disruptive' "${b[@]/#/$t/}" &
{ run c-threading threading -m 'both_runtimes and not disruptive' $t
  run c-eventlet eventlet -m 'not disruptive' $t "${a[@]/#/--ignore=$t/}" "${b[@]/#/--ignore=$t/}"
} &
wait
show a-eventlet b-eventlet c-threading c-eventlet
echo "== lanes done in $(( $(date +%s) - start )) s"
run disruptive-eventlet eventlet -m disruptive $t
run disruptive-threading threading -m 'both_runtimes and disruptive' $t
show disruptive-eventlet disruptive-threading
echo "== functional tests $( [ $rc = 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - start )) s"
rm -rf "$logs"
exit $rc
