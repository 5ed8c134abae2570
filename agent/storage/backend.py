"""The storage backend contract, and the capacity reservations every backend shares."""
import abc
import dataclasses
import threading

from agent import exception

GiB = 1024 ** 3
INSTANCE_TAG_PREFIX = 'ca-instance-'
OWNER_TAG = 'compute-agent'


@dataclasses.dataclass(frozen=True)
class Disk:
    """A root disk ready for the hypervisor."""

    path: str
    format: str          # raw | qcow2
    kind: str            # block | file


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    """What the backend holds for one instance."""

    uuid: str
    name: str
    size: int


class StorageBackend(abc.ABC):
    """Root disks of instances.

    ``reserve`` runs when a boot request arrives: a disk that does not fit is refused there and
    then. ``create_root_disk`` makes the disk (and removes whatever it made if it fails);
    ``delete_disks`` removes an instance's disks and succeeds when there are none. Every
    answer about existing disks and capacity comes from one shared listing (``report``).
    """

    kind = 'none'

    def __init__(self):
        self._reserved: dict[str, int] = {}
        self._lock = threading.Lock()

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
    def create_root_disk(self, uuid: str, size: int, image: str | None) -> Disk:
        """Create the root disk of ``size`` bytes, with ``image`` written into it if given."""

    @abc.abstractmethod
    def delete_disks(self, uuid: str) -> None:
        """Remove the instance's disks; nothing to remove is fine."""

    def stats(self) -> dict:
        return {}

    # -- reservations -----------------------------------------------------------------------
    def _free_space(self) -> tuple[int, object]:
        """Free bytes and the version of the listing they come from."""
        return self.capacity()['free'], None

    def _listing_version(self) -> object:
        """The version a listing must have to show every disk made so far."""
        return None

    def reserve(self, uuid: str, size: int) -> None:
        """Hold ``size`` bytes for a boot until its disk exists (or the boot fails).

        A disk created while the free space was being read has already dropped its own
        reservation, so a reading older than the listing version is read again; otherwise
        that disk's space would count as free.
        """
        for attempt in range(5):
            free, version = self._free_space()    # may run the listing: outside the lock
            with self._lock:
                # One critical section: creators invalidate the listing before they release.
                if version != self._listing_version() and attempt < 4:
                    continue
                pending = sum(self._reserved.values())
                if size > free - pending:
                    raise exception.InsufficientStorage(
                        reason='%.1f GiB does not fit: %s has %.1f GiB free (%.1f GiB held for '
                               'boots in progress)' % (size / GiB, self.describe(), free / GiB,
                                                       pending / GiB))
                self._reserved[uuid] = size
                return

    def release(self, uuid: str) -> None:
        with self._lock:
            self._reserved.pop(uuid, None)

    def reserved(self) -> int:
        with self._lock:
            return sum(self._reserved.values())

    def describe(self) -> str:
        return self.kind
