"""Per-instance directories under ``[DEFAULT] instances_path``, marked as the agent's own.

``InstanceDirs`` is the one owner of these directories: the driver (console log), the file
storage backend (disk files) and recovery (orphans) all go through it. Each directory holds a
marker file naming its instance; a directory is recognised, and removed, only by that record,
never by its name alone.
"""
import logging
import os
import shutil

from agent import exception

LOG = logging.getLogger(__name__)

MARKER = '.compute-agent-instance'


class InstanceDirs:
    """The marked per-instance directories under ``base``."""

    def __init__(self, base: str):
        self.base = base

    def path(self, uuid: str) -> str:
        """The directory of instance ``uuid`` (whether or not it exists)."""
        return os.path.join(self.base, uuid)

    def create(self, uuid: str) -> str:
        """Make (or keep) the instance's marked directory; return its path. A directory of
        that name that is not marked as the agent's is never taken over (DirectoryNotOurs)."""
        d = self.path(uuid)
        if self._marked(uuid):
            return d
        try:
            os.makedirs(d)
        except FileExistsError:
            raise exception.DirectoryNotOurs(path=d) from None
        with open(os.path.join(d, MARKER), 'w') as f:
            f.write(uuid + '\n')
        return d

    def _marked(self, uuid: str) -> bool:
        try:
            with open(os.path.join(self.path(uuid), MARKER)) as f:
                return f.read().strip() == uuid
        except (FileNotFoundError, NotADirectoryError, UnicodeDecodeError):
            return False

    def owned(self) -> dict[str, str]:
        """uuid -> directory, for every directory whose marker names the directory's uuid."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return {}
        return {name: self.path(name) for name in names if self._marked(name)}

    def remove(self, uuid: str) -> None:
        """Remove the instance's directory if it is the agent's (its marker names ``uuid``);
        a directory of that name without the marker is left alone."""
        if self._marked(uuid):
            shutil.rmtree(self.path(uuid), ignore_errors=True)
        elif os.path.lexists(self.path(uuid)):
            LOG.warning('[instance: %s] %s is not marked as the agent\'s: left alone', uuid,
                        self.path(uuid))

    def remove_if_empty(self, uuid: str) -> None:
        """Remove the directory if nothing but its marker is left in it."""
        try:
            if set(os.listdir(self.path(uuid))) <= {MARKER}:
                self.remove(uuid)
        except FileNotFoundError:
            pass
