"""Resource accounting: what the node offers, what instances claim, and usage reports.

``ResourceTracker`` holds the node's capacity (vCPUs, memory, disk) and one claim per instance.
A boot claims before any libvirt or LVM work; a claim that does not fit is refused with the
resource named. The lock guards in-memory arithmetic only: nothing here does I/O, and the
report of a change is handed to ``notify`` after the lock is released.

Every change that alters capacity or usage gets a new generation (strictly increasing, also
across restarts); a change that alters nothing gets none and is counted as skipped. The
periodic audit hands in what the hypervisor and the storage really hold and corrects the
claims only where they differ.
"""
import collections
import contextlib
import dataclasses
import itertools
import logging
import threading
import time
from typing import Callable, Iterator

from agent import exception

LOG = logging.getLogger(__name__)

RESOURCES = ('vcpus', 'memory_mb', 'disk_gb')
USAGE_KEYS = ('capacity', 'usage', 'instances', 'reserved')   # what a usage report is about


def same_usage(a: dict | None, b: dict | None) -> bool:
    """True if two usage reports say the same (whatever their generations)."""
    return a is not None and b is not None and all(a.get(k) == b.get(k) for k in USAGE_KEYS)


@dataclasses.dataclass(frozen=True)
class Amounts:
    """vCPUs, memory (MiB) and disk (GiB): a claim, a usage or a capacity."""
    vcpus: int = 0
    memory_mb: int = 0
    disk_gb: int = 0

    def __add__(self, other: 'Amounts') -> 'Amounts':
        return Amounts(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def __sub__(self, other: 'Amounts') -> 'Amounts':
        return Amounts(*(a - b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, int, int]:
        """(vcpus, memory_mb, disk_gb)."""
        return (self.vcpus, self.memory_mb, self.disk_gb)

    def to_dict(self) -> dict:
        """{vcpus, memory_mb, disk_gb}."""
        return dict(zip(RESOURCES, self.astuple()))


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Ratios and host reservations (``[resources]`` options)."""

    cpu_ratio: float = 16.0
    ram_ratio: float = 1.0
    disk_ratio: float = 1.0
    reserved_cpus: int = 0
    reserved_memory_mb: int = 512
    reserved_disk_gb: int = 0

    def capacity(self, cpus: int, memory_mb: int, disk_gb: int) -> Amounts:
        """What may be claimed on a node with this inventory (ratios applied, reserves taken
        off)."""
        return Amounts(vcpus=max(0, int((cpus - self.reserved_cpus) * self.cpu_ratio)),
                       memory_mb=max(0, int((memory_mb - self.reserved_memory_mb) * self.ram_ratio)),
                       disk_gb=max(0, int((disk_gb - self.reserved_disk_gb) * self.disk_ratio)))


def _size(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise exception.InvalidSpec(reason='%s: must be an integer >= %d, got %r'
                                    % (name, minimum, value))
    return value


class _TimedLock:
    """A lock that measures how long callers wait for it and how long they hold it.

    Hold time is measured twice: wall-clock (which, under eventlet, also counts moments the
    process spends waiting for the GIL while native work-queue threads run) and CPU time of
    the holding thread (only the work done inside the critical section).
    """

    def __init__(self, clock: Callable[[], float], samples: int = 1024):
        self._lock = threading.Lock()
        self._clock = clock
        self.acquisitions = 0
        self.wait_total = 0.0
        self.wait_max = 0.0
        self.hold_total = 0.0
        self.hold_max = 0.0
        self.hold_cpu_max = 0.0
        self._holds: collections.deque = collections.deque(maxlen=samples)
        self._held_since = (0.0, 0.0)

    def __enter__(self):
        t0 = self._clock()
        self._lock.acquire()
        t1 = self._clock()
        self._held_since = (t1, time.thread_time())
        self.acquisitions += 1
        self.wait_total += t1 - t0
        self.wait_max = max(self.wait_max, t1 - t0)
        return self

    def __exit__(self, *exc):
        since, cpu_since = self._held_since
        cpu = time.thread_time() - cpu_since
        held = self._clock() - since
        self.hold_total += held
        self.hold_max = max(self.hold_max, held)
        self.hold_cpu_max = max(self.hold_cpu_max, cpu)
        self._holds.append(held)
        self._lock.release()

    def stats(self) -> dict:
        holds = sorted(self._holds) or [0.0]    # the latest samples
        n = max(1, self.acquisitions)
        return {'acquisitions': self.acquisitions,
                'wait_total_s': round(self.wait_total, 6),
                'wait_max_us': round(self.wait_max * 1e6, 1),
                'hold_mean_us': round(self.hold_total / n * 1e6, 2),
                'hold_p50_us': round(holds[len(holds) // 2] * 1e6, 1),
                'hold_p99_us': round(holds[min(len(holds) - 1, int(len(holds) * 0.99))] * 1e6, 1),
                'hold_max_us': round(self.hold_max * 1e6, 1),
                'hold_cpu_max_us': round(self.hold_cpu_max * 1e6, 1)}


class AuditToken:
    """An audit under way: the claim changes made since it began are not judged by its
    listings."""
    def __init__(self, busy=()):
        self.touched: set[str] = set()   # uuids claimed or released since the audit began
        self.busy: set[str] = set(busy)  # uuids a job worked on when it began


class ResourceTracker:
    """Claims and usage of one node. Thread-safe; ``notify(report)`` must not block long."""

    def __init__(self, host: str, allocation: Allocation, notify: Callable[[dict], None],
                 clock: Callable[[], float] = time.perf_counter,
                 next_generation: Callable[[], int] | None = None):
        self.host = host
        self.allocation = allocation
        self._notify = notify
        self._lock = _TimedLock(clock)
        self._claims: dict[str, Amounts] = {}
        self._usage = Amounts()
        self._inventory = {'cpus': 0, 'memory_mb': 0, 'disk_gb': 0}
        self._capacity = Amounts()
        # Strictly growing, across restarts too (``agent.sequence`` under the agent).
        self._next_generation = next_generation or itertools.count(time.time_ns()).__next__
        self._last: dict | None = None      # the last report handed to notify
        self._audits: list[AuditToken] = []
        self.counts = dict.fromkeys(('claims', 'refusals', 'releases', 'reports_queued',
                                     'reports_skipped_noop', 'audits', 'audit_corrections'), 0)

    # -- capacity -------------------------------------------------------------------------------
    def set_inventory(self, cpus: int | None = None, memory_mb: int | None = None,
                      disk_gb: int | None = None) -> None:
        """What the host has (before ratios and reservations); None keeps the current value."""
        with self._lock:
            for key, value in (('cpus', cpus), ('memory_mb', memory_mb), ('disk_gb', disk_gb)):
                if value is not None:
                    self._inventory[key] = int(value)
            self._capacity = self.allocation.capacity(**self._inventory)
            report = self._changed_locked()
        self._send(report)

    # -- claims ---------------------------------------------------------------------------------
    def claim(self, uuid: str, vcpus, memory_mb, disk_gb=0,
              instead_of: str | None = None) -> Amounts:
        """Hold the resources of instance ``uuid``; raise (changing nothing) if they cannot be.
        ``instead_of``: a reservation (a saved spare's disk) that ends as this claim begins,
        in one step: what it held counts as free for this claim."""
        want = Amounts(_size('vcpus', vcpus, 1), _size('memory_mb', memory_mb, 1),
                       _size('disk_gb', disk_gb, 0))
        with self._lock:
            moved = self._claims.get(instead_of, Amounts()) if instead_of else Amounts()
            try:
                if uuid in self._claims:
                    raise exception.ClaimExists(uuid=uuid)
                self._usage = self._usage - moved
                try:
                    self._check_fits_locked(want)
                finally:
                    self._usage = self._usage + moved
            except exception.AgentError:
                self.counts['refusals'] += 1
                raise
            if instead_of:
                self._claims.pop(instead_of, None)
                self._touch_locked(instead_of)
            self._claims[uuid] = want
            self._usage = self._usage - moved + want
            self.counts['claims'] += 1
            self._touch_locked(uuid)
            report = self._changed_locked()
        self._send(report)
        return want

    def reserve(self, uuid: str, disk_gb: int, memory_mb: int = 0) -> Amounts:
        """Hold ``disk_gb`` (and ``memory_mb``) for ``uuid``, something that is not an
        instance (a saved spare; a hot one holds its memory too): reserved capacity, counted in
        usage, never given to instances; ``release`` ends it. A claim of ``uuid`` it replaces
        is dropped (a spare made and then saved or paused). Reserved memory must fit the
        node's memory without overcommit (``ram_ratio`` does not apply to it)."""
        want = Amounts(0, _size('memory_mb', memory_mb, 0), _size('disk_gb', disk_gb, 0))
        with self._lock:
            held = self._claims.pop(uuid, Amounts())
            self._usage = self._usage - held
            try:
                self._check_fits_locked(want)
                self._check_memory_locked(want.memory_mb)
            except exception.AgentError:
                self._claims[uuid] = held
                self._usage = self._usage + held
                self.counts['refusals'] += 1
                raise
            self._claims[uuid] = want
            self._usage = self._usage + want
            self._touch_locked(uuid)
            report = self._changed_locked()
        self._send(report)
        return want

    def _check_fits_locked(self, want: Amounts) -> None:
        for name, need, cap, used in zip(RESOURCES, want.astuple(), self._capacity.astuple(),
                                         self._usage.astuple()):
            if need > cap:
                raise exception.InsufficientResources(
                    resource=name, reason='%d requested, more than this node offers '
                    'instances in all (%d)' % (need, cap))
            if need > cap - used:
                raise exception.InsufficientResources(
                    resource=name, reason='%d requested, %d of %d free'
                    % (need, max(0, cap - used), cap))

    def _check_memory_locked(self, memory_mb: int) -> None:
        if not memory_mb:
            return
        real = max(0, self._inventory['memory_mb'] - self.allocation.reserved_memory_mb)
        if self._usage.memory_mb + memory_mb > real:
            raise exception.InsufficientResources(
                resource='memory_mb', reason='%d to reserve, %d of the node\'s %d MiB free '
                'without overcommit' % (memory_mb, max(0, real - self._usage.memory_mb), real))

    def release(self, uuid: str) -> bool:
        """Drop the claim of ``uuid``; False if it held none."""
        with self._lock:
            held = self._claims.pop(uuid, None)
            if held is None:
                return False
            self._usage = self._usage - held
            self.counts['releases'] += 1
            self._touch_locked(uuid)
            report = self._changed_locked()
        self._send(report)
        return True

    def claim_of(self, uuid: str) -> Amounts | None:
        """The uuid's claim, or None."""
        with self._lock:
            return self._claims.get(uuid)

    # -- audit ----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def auditing(self, busy=()) -> Iterator[AuditToken]:
        """An audit, begun before the listings it judges are read: claims changed after this,
        and the ``busy`` instances (those a job works on now), are left alone. Ends with
        ``apply_audit``, or at exit without it (a listing failed)."""
        token = AuditToken(busy)
        with self._lock:
            self._audits.append(token)
        try:
            yield token
        finally:
            with self._lock:
                if token in self._audits:
                    self._audits.remove(token)

    def apply_audit(self, token: AuditToken, observed: dict[str, Amounts], busy: set[str],
                    disk_gb: int | None = None) -> list[str]:
        """Correct claims to what the listings showed; return the uuids corrected.

        ``observed``: uuid -> what that instance really holds. ``busy``: instances whose jobs
        ran during the audit (their listing entries may be half-made): left alone, as are
        instances claimed or released since the audit began (``auditing``).
        """
        corrected = []
        with self._lock:
            self._audits.remove(token)
            skip = token.touched | token.busy | busy
            for uuid in set(self._claims) | set(observed):
                if uuid in skip:
                    continue
                held, seen = self._claims.get(uuid), observed.get(uuid)
                if held == seen:
                    continue
                corrected.append(uuid)
                if seen is None:
                    del self._claims[uuid]
                else:
                    self._claims[uuid] = seen
                self._usage = self._usage - (held or Amounts()) + (seen or Amounts())
            if disk_gb is not None:
                self._inventory['disk_gb'] = int(disk_gb)
                self._capacity = self.allocation.capacity(**self._inventory)
            self.counts['audits'] += 1
            self.counts['audit_corrections'] += len(corrected)
            report = self._changed_locked()
        for uuid in corrected:
            LOG.warning('[instance: %s] audit corrected its usage to %s', uuid,
                        observed.get(uuid, 'nothing'))
        self._send(report)
        return corrected

    # -- reports --------------------------------------------------------------------------------
    def _touch_locked(self, uuid: str) -> None:
        for token in self._audits:
            token.touched.add(uuid)

    def _changed_locked(self) -> dict | None:
        """The report to send if capacity or usage differs from the last one, else None."""
        # Reservations (vcpus 0: saved spares) are usage, not instances.
        reserved = [a for a in self._claims.values() if a.vcpus == 0]
        body = {'capacity': self._capacity.to_dict(), 'usage': self._usage.to_dict(),
                'instances': len(self._claims) - len(reserved),
                'reserved': sum(reserved, Amounts()).to_dict()}
        if same_usage(self._last, body):
            self.counts['reports_skipped_noop'] += 1
            return None
        body.update(generation=self._next_generation(), host=self.host,
                    inventory=dict(self._inventory), at=time.time())
        self._last = body
        self.counts['reports_queued'] += 1
        return body

    def _send(self, report: dict | None) -> None:
        if report is not None:
            self._notify(report)

    def snapshot(self) -> dict:
        """The last report (capacity, usage, generation): what the conductor should hold."""
        with self._lock:
            return dict(self._last or {})

    def stats(self) -> dict:
        """Counters: claims, refusals, releases, reports, audits, lock wait and hold times."""
        return dict(self.counts, lock=self._lock.stats())
