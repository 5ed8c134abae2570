#!/usr/bin/env bash
# The test command (as root): set the node up (and PostgreSQL for the conductor tests), then run
# style checks, unit and functional tests (these under both runtimes: tools/run-functional.sh).
#   tools/run-tests.sh [tox envs]        default: pep8,py3,functional
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
images=/var/lib/compute-agent/images
envs=${1:-pep8,py3,functional}
"$top/tools/setup-node.sh"
"$top/tools/setup-conductor-db.sh" >/dev/null
"$top/tools/build-test-guest.sh" "$images"
# The real guest (about a minute when not cached) is built while the venv, the style checks
# and the unit tests run; the functional tests start once it is there.
log=$(mktemp /var/tmp/build-real-guest.XXXXXX.log)
"$top/tools/build-real-guest.sh" "$images" >"$log" 2>&1 &
builder=$!
venv=$("$top/tools/bootstrap.sh")
cd "$top"
rest=$(echo "$envs" | tr , '\n' | grep -vx functional | paste -sd, || true)
if [ -n "$rest" ]; then
    "$venv/bin/tox" -e "$rest" || { wait "$builder" || true; exit 1; }
fi
if ! wait "$builder"; then
    echo "tools/build-real-guest.sh failed:" >&2; tail -20 "$log" >&2; exit 1
fi
rm -f "$log"
if echo "$envs" | tr , '\n' | grep -qx functional; then
    # The env only; tools/run-functional.sh runs the suite in lanes, in both runtimes.
    "$venv/bin/tox" -e functional --notest
    exec "$top/tools/run-functional.sh" "$top/.tox/functional"
fi
