"""Per-instance directories under ``[DEFAULT] instances_path``, marked as the agent's own.

Each directory holds a marker file naming its instance, so reconciliation recognises the
agent's directories by that record, never by guessing from names.
"""
import os
import shutil

MARKER = '.compute-agent-instance'


def path(base: str, uuid: str) -> str:
    return os.path.join(base, uuid)


def create(base: str, uuid: str) -> str:
    d = path(base, uuid)
    os.makedirs(d, exist_ok=True)
    marker = os.path.join(d, MARKER)
    if not os.path.exists(marker):
        with open(marker, 'w') as f:
            f.write(uuid + '\n')
    return d


def owned(base: str) -> dict[str, str]:
    """uuid -> directory, for every directory whose marker names the directory's uuid."""
    out = {}
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return out
    for name in names:
        try:
            with open(os.path.join(base, name, MARKER)) as f:
                if f.read().strip() == name:
                    out[name] = path(base, name)
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            continue
    return out


def remove(base: str, uuid: str) -> None:
    shutil.rmtree(path(base, uuid), ignore_errors=True)


def remove_if_empty(base: str, uuid: str) -> None:
    """Remove the directory if nothing but its marker is left in it."""
    d = path(base, uuid)
    try:
        if set(os.listdir(d)) <= {MARKER}:
            remove(base, uuid)
    except FileNotFoundError:
        pass
