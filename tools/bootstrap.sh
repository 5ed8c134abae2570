#!/usr/bin/env bash
# Create .venv (Debian's python3) with the pinned tox and the agent installed against constraints.txt.
# Idempotent. Prints the venv path.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv=$top/.venv
stamp=$venv/.stamp-$(cat "$top/constraints.txt" "$top/requirements.txt" "$top/setup.py" | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q -c "$top/constraints.txt" pip tox >&2
    "$venv/bin/pip" install -q -c "$top/constraints.txt" -e "$top" >&2
    rm -f "$venv"/.stamp-*
    touch "$stamp"
fi
echo "$venv"
