"""Spares: each one a marked directory under the instances path (the ``InstanceDirs`` of its
own libvirt uuid) holding its record ``spare.json``, (file storage) its root disk, and either
its memory image ``memory.save`` (a saved spare) or its console log (a hot one: its domain
runs on, paused in memory).

A record is written when making a spare begins (``making``), rewritten once the spare is saved
or paused (``saved``, ``hot``: complete, usable) and again when a boot takes it (``taken``: its
disk belongs to an instance from then on). Only ``saved`` spares with their image and disk,
and ``hot`` ones whose paused domain is there, survive a restart; anything else is what an
interrupted make or take left, and is removed. Records are
written with fsync and an atomic rename, and they and removals (a memory image is tens of
MB) run on the work queue (``execute``): never on the caller's greenthread.
"""
import dataclasses
import json
import logging
import os
import threading
import time

from agent import crashpoints
from agent import durable
from agent import instancedir
from agent.storage import backend as storage_backend

LOG = logging.getLogger(__name__)

RECORD = 'spare.json'
IMAGE = 'memory.save'
MAKING, SAVED, HOT, TAKEN = 'making', 'saved', 'hot', 'taken'


@dataclasses.dataclass(frozen=True)
class Spare:
    """A spare: its libvirt identity (``uuid``), pool, flavor sizes, disk, memory image and
    the domain XML stored in that image (the restore's XML is made from it); a hot one
    (``hot``) has no image (``image`` empty), its XML is its running domain's."""

    uuid: str
    pool: str
    vcpus: int
    memory_mb: int
    disk_gb: int
    disk: dict | None          # storage_backend.Disk as a dict, None without a disk
    image: str                 # the memory image's path
    xml: str
    saved_at: float            # when it was saved or paused
    flavor: list = dataclasses.field(default_factory=list)   # the pool's when it was made
    # [field, path, [device, inode, size, mtime]] of its kernel, initrd and image when made
    files: list = dataclasses.field(default_factory=list)
    hot: bool = False

    def disk_object(self) -> storage_backend.Disk | None:
        """The disk as the backend describes it."""
        return storage_backend.Disk(**self.disk) if self.disk else None

    def stale(self, flavor: list, files: tuple, now: float, max_age: float) -> str | None:
        """Why the spare may no longer be handed out, or None: its pool's flavor is not the
        one it was made with (``flavor``: ``Pool.fingerprint()``), a file it booted from is
        not the one there now (``files``: the CheckedFiles of a spec of the pool, just
        checked), or it is older than ``max_age`` seconds."""
        if self.flavor != flavor:
            return "its pool's flavor changed"
        if now - self.saved_at > max_age:
            return 'saved %.0f s ago, more than [warm] max_spare_age' % (now - self.saved_at)
        if sorted(self.files) != sorted(file_records(files)):
            return 'its kernel, initrd or image is not the file it booted from'
        return None


def file_records(files: tuple) -> list:
    """CheckedFiles (agent.spec) as a spare records them."""
    return [[f.field, f.path, list(f.identity)] for f in files]


class SpareStore:
    """The spares recorded in the marked directories; the available ones by pool in memory
    (``take`` hands each out once)."""

    def __init__(self, dirs: instancedir.InstanceDirs, execute=None):
        self._dirs = dirs
        self._execute = execute or (lambda op, fn, *args: fn(*args))
        self._lock = threading.Lock()
        self._available: dict[str, list[Spare]] = {}    # pool -> saved spares, oldest first
        self._hot: dict[str, list[Spare]] = {}          # pool -> hot spares, oldest first
        self.making: set[str] = set()                   # uuids of spares being made

    # -- records ----------------------------------------------------------------------------
    def image_path(self, uuid: str) -> str:
        return os.path.join(self._dirs.path(uuid), IMAGE)

    def _write(self, uuid: str, record: dict) -> None:
        self._execute('spare.record', self._write_now, uuid, record)

    def _write_now(self, uuid: str, record: dict) -> None:
        durable.write_file(os.path.join(self._dirs.path(uuid), RECORD), json.dumps(record))

    @staticmethod
    def _read(path: str) -> dict | None:
        try:
            with open(os.path.join(path, RECORD)) as f:
                record = json.load(f)
            return record if isinstance(record, dict) else None
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None

    def begin(self, uuid: str, pool: str) -> None:
        """Record that spare ``uuid`` of ``pool`` is being made (its marked directory)."""
        self._dirs.create(uuid)
        self._write(uuid, {'state': MAKING, 'uuid': uuid, 'pool': pool, 'at': time.time()})
        self.making.add(uuid)
        crashpoints.reached('spare.make.begun', uuid)

    def _kind(self, spare: Spare) -> dict[str, list[Spare]]:
        return self._hot if spare.hot else self._available

    def saved(self, spare: Spare) -> None:
        """The spare is complete (saved, or ``hot``): recorded, and available to boots."""
        self._write(spare.uuid, dict(dataclasses.asdict(spare),
                                     state=HOT if spare.hot else SAVED))
        crashpoints.reached('spare.save.recorded', spare.uuid)
        self.making.discard(spare.uuid)
        with self._lock:
            self._kind(spare).setdefault(spare.pool, []).append(spare)

    def take(self, pool: str) -> Spare | None:
        """The oldest hot spare of ``pool``, else its oldest saved one, handed out once; None
        if there is none."""
        with self._lock:
            for kind in (self._hot, self._available):
                spares = kind.get(pool)
                if spares:
                    return spares.pop(0)
            return None

    def give_back(self, spare: Spare) -> None:
        """A spare taken and not used (nothing of it changed): available again."""
        with self._lock:
            self._kind(spare).setdefault(spare.pool, []).insert(0, spare)

    def take_expired(self, before: float) -> list[Spare]:
        """The available spares saved or paused before ``before``, handed out (to be
        retired)."""
        with self._lock:
            out = [s for kind in (self._hot, self._available) for spares in kind.values()
                   for s in spares if s.saved_at < before]
            for spare in out:
                self._kind(spare)[spare.pool].remove(spare)
        return out

    def take_hot(self, uuid: str) -> Spare | None:
        """Hot spare ``uuid`` if it is available, handed out (its domain stopped)."""
        with self._lock:
            for spares in self._hot.values():
                for spare in spares:
                    if spare.uuid == uuid:
                        spares.remove(spare)
                        return spare
        return None

    def mark_taken(self, spare: Spare, instance: str) -> None:
        """Durably: the spare is an instance's from now on (a restart removes what is left
        of it, never the instance's disk)."""
        self._write(spare.uuid, dict(dataclasses.asdict(spare), state=TAKEN,
                                     taken_by=instance))

    def remove(self, uuid: str, link_to: str | None = None) -> None:
        """Remove the spare's directory (record, memory image, console log); ``link_to``: an
        instance resumed from it, whose console QEMU goes on writing by this path."""
        self.making.discard(uuid)
        self._dirs.remove(uuid, link_to)

    # -- views ------------------------------------------------------------------------------
    def counts(self, hot: bool = False) -> dict[str, int]:
        """Available saved (or ``hot``) spares by pool."""
        with self._lock:
            kind = self._hot if hot else self._available
            return {pool: len(spares) for pool, spares in kind.items()}

    def available(self) -> list[Spare]:
        """Every available spare, hot and saved."""
        with self._lock:
            return [s for kind in (self._hot, self._available) for spares in kind.values()
                    for s in spares]

    def reserved_uuids(self) -> set[str]:
        """Spares saved or being made: their disks and directories are not orphans."""
        return {s.uuid for s in self.available()} | set(self.making)

    # -- start-up ---------------------------------------------------------------------------
    def load(self, disks: set[str], wanted, paused: set[str] = frozenset()
             ) -> tuple[list[Spare], list[str]]:
        """Read the records: (saved spares whose image and disk are there, and hot ones whose
        disk is there and whose domain is ``paused`` (uuids of paused spare domains), that
        ``wanted(spare, rank)`` keeps (rank: how many of its pool and kind are kept before
        it, oldest first), now available; uuids of every other spare directory: interrupted
        makes, taken spares, broken or unwanted ones: to remove). ``disks``: uuids with a
        disk."""
        keep, remove = [], []
        for uuid, path in self._dirs.owned().items():
            record = self._read(path)
            if record is None:
                continue                 # an instance's directory
            state = record.get('state')
            spare = self._spare(record) if state in (SAVED, HOT) else None
            if (spare is None or spare.uuid != uuid or spare.hot != (state == HOT)
                    or not (uuid in paused if spare.hot else os.path.isfile(spare.image))
                    or (spare.disk is not None and uuid not in disks)):
                remove.append(uuid)
                continue
            keep.append(spare)
        keep.sort(key=lambda s: s.saved_at)
        ranks: dict[tuple, int] = {}
        for spare in list(keep):
            rank = ranks.get((spare.pool, spare.hot), 0)
            if wanted(spare, rank):
                ranks[(spare.pool, spare.hot)] = rank + 1
            else:
                keep.remove(spare)
                remove.append(spare.uuid)
        with self._lock:
            self._available, self._hot = {}, {}
            for spare in keep:
                self._kind(spare).setdefault(spare.pool, []).append(spare)
        return keep, remove

    @staticmethod
    def _spare(record: dict) -> Spare | None:
        fields = {f.name for f in dataclasses.fields(Spare)}
        try:
            return Spare(**{k: v for k, v in record.items() if k in fields})
        except TypeError:
            return None
