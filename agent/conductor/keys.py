"""The nodes' report keys, as the conductor finds them: one file per node, ``DIR/NAME.key``,
holding the key in hex (``tools/setup-node.sh --node NAME`` writes it, ``--remove-node``
removes it). Read again when the file changes (a new file renamed into place, as the
set-up writes it), so a rotated or removed key takes effect at the node's next report without
a restart."""
import logging
import os
import stat
import threading

from agent import signing
from agent.conductor import validate

LOG = logging.getLogger(__name__)


class NodeKeys:
    def __init__(self, directory: str):
        self.directory = directory
        self._cache: dict[str, tuple[tuple, bytes | None]] = {}
        self._lock = threading.Lock()

    def get(self, host: str) -> bytes | None:
        """Node ``host``'s key, or None (no key file, or a bad one: said in the log)."""
        host = validate.host(host)              # a plain name: no path separators
        path = os.path.join(self.directory, host + '.key')
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)
        with self._lock:
            cached = self._cache.get(host)
        if cached and cached[0] == ident:
            return cached[1]
        key = None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            LOG.error('report key %s is readable by others: not used', path)
        else:
            try:
                with open(path) as f:
                    key = signing.parse_key(f.read())
            except (OSError, ValueError) as exc:
                LOG.error('report key %s unusable: %s', path, exc)
        with self._lock:
            self._cache[host] = (ident, key)
        return key
