"""compute-ctl's commands (the entry point, agent/cmd/ctl.py, parses and dispatches):
``boot`` (boot.py), the other instance commands (instances.py)."""
import json


def message(exc: Exception) -> str:
    """An error's message: a remote exception's str() carries the server's traceback; its
    first arg is the message."""
    return exc.args[0] if exc.args else str(exc)


def print_json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))
