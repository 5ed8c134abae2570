"""Files that survive a crash whole or not at all: written under a temporary name, fsynced,
renamed over the final name, and the directory fsynced so the rename itself is on disk.
Plain code, blocking: callers run it on the work queue."""
import os


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` (creates, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes | str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data``: readers (and a restart) see the old file or the new
    one, never a part of it."""
    if isinstance(data, str):
        data = data.encode()
    tmp = path + '.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path) or '.')
