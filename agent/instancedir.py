"""Per-instance directories under ``[DEFAULT] instances_path``, marked as the agent's own.

``InstanceDirs`` is the one owner of these directories: the driver (console log), the file
storage backend (disk files) and recovery (orphans) all go through it. Each directory holds a
marker file naming its instance; a directory is recognised, and removed, only by that record,
never by its name alone.

Both changes are atomic, so a crash never leaves a directory without its marker (which every
later start would refuse as not the agent's): a directory is made with its marker under a
temporary name (``.making-<uuid>-*``) and renamed into place; it is removed by a rename to
``.removing-<uuid>-*`` first. ``sweep`` removes what a crash left under those names (marked
ones only) at start-up.

A hot spare resumed as an instance leaves a link in place of its directory: ``<spare uuid>``
-> ``<instance uuid>`` (relative). Its QEMU's serial console goes through virtlogd, which
holds the spare's console path and rolls the log over by that path (rename, then a new file
there): through the link the rollover happens in the instance's directory, where its console
was moved. Nothing else follows these links (they are never marked); each goes when its
instance's directory goes, and a dangling one at start-up.
"""
import logging
import os
import shutil
import stat
import uuid as uuidlib

from agent import crashpoints
from agent import durable
from agent import exception
from agent import spec as specmod

LOG = logging.getLogger(__name__)

MARKER = '.compute-agent-instance'
MODE = 0o700            # a tenant's console log, disk and memory image: root's alone
GROUP_MODE = 0o710      # with QEMU's group: QEMU may enter (to open its disk), not list
MAKING = '.making-'
REMOVING = '.removing-'


class InstanceDirs:
    """The marked per-instance directories under ``base``."""

    def __init__(self, base: str, execute=None, gid: int | None = None):
        """``execute(op, fn, *args)``: where the blocking work runs (fsyncs, removals: the
        agent's work queue); by default in the caller. ``gid``: QEMU's group, which may enter
        the directories (mode ``GROUP_MODE``); without it they are root's alone (``MODE``)."""
        self.base = base
        self._execute = execute or (lambda op, fn, *args: fn(*args))
        self.gid = gid
        self.mode = MODE if gid is None else GROUP_MODE

    def path(self, uuid: str) -> str:
        """The directory of instance ``uuid`` (whether or not it exists)."""
        return os.path.join(self.base, uuid)

    def create(self, uuid: str) -> str:
        """Make (or keep) the instance's marked directory; return its path. A directory of
        that name that is not marked as the agent's is never taken over (DirectoryNotOurs)."""
        return self._execute('dir.create', self._create, uuid)

    def create_here(self, uuid: str) -> str:
        """``create``, run by the caller (already on the work queue)."""
        return self._create(uuid)

    def execute(self, op: str, fn, *args):
        """Run ``fn(*args)`` where these directories' blocking work runs (the work queue):
        for the other filesystem changes in them. A rename or unlink can wait for the
        filesystem's journal (another thread's fsync), so it never runs in an event loop."""
        return self._execute(op, fn, *args)

    def _create(self, uuid: str) -> str:
        d = self.path(uuid)
        if self._marked(uuid):
            self._tighten(d)
            return d
        if os.path.lexists(d):
            raise exception.DirectoryNotOurs(path=d)
        os.makedirs(self.base, exist_ok=True)
        tmp = os.path.join(self.base, '%s%s-%s' % (MAKING, uuid, uuidlib.uuid4().hex[:8]))
        os.mkdir(tmp, MODE)
        if self.gid is not None:
            os.chown(tmp, -1, self.gid)
            os.chmod(tmp, self.mode)
        durable.write_file(os.path.join(tmp, MARKER), uuid + '\n', mode=0o644)
        crashpoints.reached('dir.create.made', uuid)
        if os.path.lexists(d):            # made meanwhile (by a concurrent create of ours?)
            shutil.rmtree(tmp, ignore_errors=True)
            if self._marked(uuid):
                return d
            raise exception.DirectoryNotOurs(path=d)
        os.rename(tmp, d)
        durable.fsync_dir(self.base)
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

    def remove(self, uuid: str, link_to: str | None = None) -> None:
        """Remove the instance's directory if it is the agent's (its marker names ``uuid``);
        a directory of that name without the marker is left alone. ``link_to``: a link to
        that instance's directory takes its place (a resumed hot spare's, module docstring)."""
        self._execute('dir.remove', self._remove, uuid, link_to)

    def _remove(self, uuid: str, link_to: str | None = None) -> None:
        if self._marked(uuid):
            gone = os.path.join(self.base, '%s%s-%s' % (REMOVING, uuid, uuidlib.uuid4().hex[:8]))
            os.rename(self.path(uuid), gone)
            if link_to is not None and self._marked(link_to):
                os.symlink(link_to, self.path(uuid))
            durable.fsync_dir(self.base)
            crashpoints.reached('dir.remove.renamed', uuid)
            shutil.rmtree(gone, ignore_errors=True)
        elif os.path.lexists(self.path(uuid)) and self._link_target(uuid) is None:
            LOG.warning('[instance: %s] %s is not marked as the agent\'s: left alone', uuid,
                        self.path(uuid))
        self._unlink_links(lambda target: target == uuid)

    def _link_target(self, name: str) -> str | None:
        """The instance uuid a console link ``name`` points to, or None (not such a link)."""
        if not specmod.is_canonical_uuid(name):
            return None
        try:
            target = os.readlink(self.path(name))
        except OSError:
            return None
        return target if specmod.is_canonical_uuid(target) else None

    def _unlink_links(self, stale) -> list[str]:
        """Remove the console links whose target ``stale(target)`` says; their names."""
        removed = []
        try:
            entries = [e.name for e in os.scandir(self.base) if e.is_symlink()]
        except FileNotFoundError:
            return removed
        for name in entries:
            target = self._link_target(name)
            if target is not None and stale(target):
                try:
                    os.unlink(self.path(name))
                    removed.append(name)
                except FileNotFoundError:
                    pass
        return removed

    def tighten(self) -> int:
        """Give every marked directory this node's mode and group (one made by an older agent
        was world-readable, or root's alone); how many were changed."""
        return sum(self._tighten(path) for path in self.owned().values())

    def _tighten(self, path: str) -> bool:
        """Set ``path``'s group and mode to this node's if they differ; whether it did."""
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return False
        changed = False
        if self.gid is not None and st.st_gid != self.gid:
            os.chown(path, -1, self.gid)
            changed = True
        if stat.S_IMODE(st.st_mode) != self.mode:
            os.chmod(path, self.mode)
            changed = True
        return changed

    def sweep(self) -> list[str]:
        """Remove what an interrupted create or remove left under a temporary name (only
        directories holding the marker of the uuid their name carries), and console links
        whose instance's directory is gone; their names."""
        try:
            names = os.listdir(self.base)
        except FileNotFoundError:
            return []
        removed = self._unlink_links(lambda target: not self._marked(target))
        for name in names:
            for prefix in (MAKING, REMOVING):
                if not name.startswith(prefix):
                    continue
                uuid = name[len(prefix):].rsplit('-', 1)[0]
                path = os.path.join(self.base, name)
                try:
                    with open(os.path.join(path, MARKER)) as f:
                        ours = f.read().strip() == uuid
                except (OSError, UnicodeDecodeError):
                    ours = False
                if ours:
                    LOG.warning('[instance: %s] removing %s, left by an interrupted %s', uuid,
                                path, 'create' if prefix == MAKING else 'removal')
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(name)
        return removed

    def remove_if_empty(self, uuid: str) -> None:
        """Remove the directory if nothing but its marker is left in it."""
        try:
            if set(os.listdir(self.path(uuid))) <= {MARKER}:
                self.remove(uuid)
        except FileNotFoundError:
            pass
