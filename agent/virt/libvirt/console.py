"""The serial console log of a domain: read its tail without trusting it (pure file I/O,
run on the work queue)."""
import os

from agent import exception

CONSOLE_LOG = 'console.log'


def read_tail(path: str, max_bytes: int) -> dict:
    """The last ``max_bytes`` of the file at ``path`` (not following a symlink), decoded
    with replacement: guest output is untrusted bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return {'output': '', 'size': 0, 'truncated': False}
    except OSError as exc:
        raise exception.AgentError('console log %s: %s' % (path, exc.strerror)) from None
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - max_bytes)
        data = os.pread(fd, min(max_bytes, size), start)
    finally:
        os.close(fd)
    return {'output': data.decode('utf-8', 'replace'), 'size': size, 'truncated': start > 0}
