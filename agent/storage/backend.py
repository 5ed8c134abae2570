"""The storage backend contract."""
import abc
import contextlib
import dataclasses

from agent import exception
from agent.storage import operations

GiB = 1024 ** 3
INSTANCE_TAG_PREFIX = operations.INSTANCE_TAG_PREFIX
OWNER_TAG = operations.OWNER_TAG


@dataclasses.dataclass(frozen=True)
class Disk:
    """A disk ready for the hypervisor: a root disk, or a read-only seed."""

    path: str
    format: str          # raw | qcow2
    kind: str            # block | file
    backing: tuple[str, str] | None = None   # (image, its format) under a qcow2 overlay
    readonly: bool = False   # the guest reads it only (a seed); its file stays the agent's


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    """What the backend holds for one instance."""

    uuid: str
    name: str
    size: int


@dataclasses.dataclass(frozen=True)
class Inventory:
    """One listing's answer: the agent's disks, and the bytes instance disks may take in all
    (the backing store's size less what others use of it)."""

    disks: dict
    instance_bytes: int


class StorageBackend(abc.ABC):
    """Root disks of instances.

    Capacity is accounted by the resource tracker (``agent.resources``), which claims a boot's
    disk before the backend is asked for anything. ``create_root_disk`` makes the disk (and
    removes whatever it made if it fails); ``delete_disks`` removes an instance's disks and
    succeeds when there are none. Every answer about existing disks and capacity comes from
    one shared listing.
    """

    kind = 'none'

    @abc.abstractmethod
    def init(self) -> dict:
        """Check the backend is usable (raise ConfigError if not); return its capacity."""

    @abc.abstractmethod
    def capacity(self) -> dict:
        """{'total': bytes, 'free': bytes} of the backing store, from the shared listing."""

    @abc.abstractmethod
    def disks(self) -> dict[str, DiskInfo]:
        """Every instance disk this agent made, by instance uuid, from the shared listing."""

    @abc.abstractmethod
    def create_root_disk(self, uuid: str, size: int, image: str | None,
                         image_format: str = 'raw') -> Disk:
        """Create the root disk of ``size`` bytes, with ``image`` (of the checked
        ``image_format``, always given explicitly to the tools) written into it if given."""

    @abc.abstractmethod
    def delete_disks(self, uuid: str) -> None:
        """Remove the instance's disks; nothing to remove is fine."""

    def adopt_disk(self, owner: str, uuid: str) -> Disk:
        """Make the disk of ``owner`` (a saved spare) instance ``uuid``'s: the same data,
        under ``uuid``'s ownership from now on, in one step a restart never sees halfway."""
        raise exception.StorageError(reason='the %s backend cannot hand a spare\'s disk to an '
                                            'instance' % self.kind)

    def stats(self) -> dict:
        """Counters: the backend's commands and listings."""
        return {}

    @abc.abstractmethod
    def inventory(self, fresh: bool = False) -> Inventory:
        """The agent's disks and the space instance disks may take, from one listing
        (``fresh``: a listing that starts now, not a cached one)."""


@contextlib.contextmanager
def all_or_nothing(remove, what: str):
    """Run the body, which makes something; if it fails, ``remove()`` what it made and raise
    StorageError (an OSError's text after ``what``)."""
    try:
        yield
    except exception.StorageError:
        remove()
        raise
    except OSError as exc:
        remove()
        raise exception.StorageError(reason='%s: %s' % (what, exc)) from None
