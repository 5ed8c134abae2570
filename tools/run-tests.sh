#!/usr/bin/env bash
# The test command (as root): set the node up (and PostgreSQL for the conductor tests), then run
# style checks, unit and functional tests.
#   tools/run-tests.sh [tox envs]        default: pep8,py3,functional
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/setup-node.sh"
"$top/tools/setup-conductor-db.sh" >/dev/null
"$top/tools/build-test-guest.sh" /var/lib/compute-agent/images
venv=$("$top/tools/bootstrap.sh")
cd "$top"
exec "$venv/bin/tox" -e "${1:-pep8,py3,functional}"
