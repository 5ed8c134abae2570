"""Keeps every warm pool full, in the background, only while the node is quiet.

One spare at a time: claim its flavor, make its disk, start it (its own libvirt identity, MACs
and disk), wait for its ready event, let it settle, then save it (its disk held as reserved
capacity) or, for a pool's hot spares, pause it in memory (its memory held too, never
overcommitted), and record it; the kind a pool lacks most comes first (hot on a tie). A boot
or delete job makes the filler wait until none has run for ``quiet_seconds`` (a spare is
never made during a storm), and a job that starts while a spare boots makes that spare give
way (removed at once). Anything that fails on the way removes what it made.

Plain code: ``runtime`` sleeps (a greenthread under the agent, a thread in tests).
"""
import dataclasses
import logging
import threading
import time
import uuid as uuidlib

from agent import crashpoints
from agent import exception
from agent import spec as specmod
from agent.storage import backend as storage_backend
from agent.warm import guest as guestmod
from agent.warm import node as nodemod
from agent.warm import pools as poolsmod
from agent.warm import spares as sparesmod

LOG = logging.getLogger(__name__)


class GaveWay(Exception):
    """A job started while a spare was being made (it would compete), or the agent stops: the
    spare is removed."""


class Filler:
    """Makes spares for ``pools`` (name -> Pool) into ``spares``."""

    def __init__(self, node: nodemod.Node, spares: sparesmod.SpareStore, pools: dict,
                 limits: specmod.Limits, retire=lambda: None, quiet_seconds: float = 2.0,
                 ready_timeout: float = 300.0, retry_interval: float = 30.0,
                 max_disk_gb: int = 0, settle_seconds: float = 2.0, tick: float = 0.5):
        """``retire()``: remove the spares too old to be handed out (called while quiet,
        before a pool's lack is counted)."""
        self._node = node
        self._retire = retire
        self._spares = spares
        self._pools = pools
        self._limits = limits
        self._quiet = quiet_seconds
        self._ready_timeout = ready_timeout
        self._retry = retry_interval
        self._max_disk_gb = max_disk_gb
        self._settle = settle_seconds
        self._tick = tick
        self._last_busy = 0.0
        self._seen_jobs = 0
        self._failed_at: dict[str, float] = {}      # pool -> when making one last failed
        self._ready: dict[str, threading.Event] = {}
        self._stopped: set[str] = set()
        self._stopping = False
        self._busy = False
        self.made = 0
        self.failures = 0
        self.gave_way = 0

    # -- events (the event bridge's greenthread) --------------------------------------------
    def on_event(self, event) -> None:
        """A spare's event: its guest is ready, or its domain stopped."""
        waiter = self._ready.get(event.uuid)
        if waiter is None:
            return
        if event.stopped:
            self._stopped.add(event.uuid)
            waiter.set()
        elif event.ready:
            waiter.set()

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Until ``stop``: when the node is quiet, make the spare the emptiest pool lacks
        most."""
        while not self._stopping:
            self._node.runtime.sleep(self._tick)
            self._busy = True
            try:
                want = self.next_spare()
                if want is not None:
                    self.make(*want)
            except Exception:      # never let the loop die: log and go on
                LOG.exception('making a spare failed unexpectedly')
            finally:
                self._busy = False

    def stop(self, timeout: float = 30.0) -> bool:
        """The agent stops: no spare is begun from now on, one being booted gives way (it is
        removed while libvirt is still connected: a transient domain would outlive the agent),
        one being saved finishes. Waits up to ``timeout`` s; True once the filler is idle."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            self._node.runtime.sleep(0.05)
        if self._busy:
            LOG.warning('a spare was still being made when the agent stopped; the next '
                        'start-up removes it')
        return not self._busy

    def _jobs_created(self) -> int:
        """Jobs accepted so far (a counter: a job that came and went is seen too)."""
        return self._node.activity().accepted

    def quiet(self) -> bool:
        """No boot, delete or power job ran within ``quiet_seconds``."""
        now = time.monotonic()
        activity = self._node.activity()
        if activity.accepted != self._seen_jobs or activity.running:
            self._seen_jobs = activity.accepted
            self._last_busy = now
        return now - self._last_busy >= self._quiet and self._node.driver.is_connected()

    def next_pool(self) -> poolsmod.Pool | None:
        """The pool to make a spare for now (``next_spare``), or None."""
        want = self.next_spare()
        return want[0] if want is not None else None

    def next_spare(self) -> tuple[poolsmod.Pool, bool] | None:
        """(pool, hot) of the spare to make now: the kind a pool lacks most, hot first on a
        tie; or None (full, quiet time not reached, capped, or a recent failure)."""
        if self._stopping or not self.quiet():
            return None
        self._retire()
        counts = {False: self._spares.counts(), True: self._spares.counts(hot=True)}
        held = sum(s.disk_gb for s in self._spares.available())
        now = time.monotonic()
        short = []
        for pool in self._pools.values():
            if now - self._failed_at.get(pool.name, -1e9) < self._retry:
                continue
            if self._max_disk_gb and held + pool.disk_gb > self._max_disk_gb:
                continue
            for hot, want in ((True, pool.hot), (False, pool.size)):
                lack = want - counts[hot].get(pool.name, 0)
                if lack > 0:
                    short.append((-lack, not hot, pool.name, pool, hot))
        return min(short)[3:] if short else None

    def make(self, pool: poolsmod.Pool, hot: bool = False) -> sparesmod.Spare | None:
        """Make one spare of ``pool`` (``hot``: paused in memory, else saved); None (and
        nothing left) if it could not be made."""
        uuid = str(uuidlib.uuid4())
        try:
            spec = specmod.validate_boot_spec(pool.raw_spec(uuid, 'spare-' + pool.name),
                                              self._limits)
            self._node.claim(uuid, spec.vcpus, spec.memory_mb, spec.disk_gb)
        except exception.AgentError as exc:
            LOG.info('[spare: %s] pool %s: not now (%s)', uuid, pool.name, exc)
            self._failed_at[pool.name] = time.monotonic()
            return None
        self._spares.begin(uuid, pool.name)
        started = time.monotonic()
        try:
            spare = self._make(uuid, pool, spec, hot)
        except GaveWay as why:
            LOG.info('[spare: %s] pool %s: %s: the spare being made gave way', uuid, pool.name,
                     why)
            self._remove(uuid, spec)
            self.gave_way += 1
            return None
        except Exception as exc:
            self.failures += 1
            self._failed_at[pool.name] = time.monotonic()
            LOG.warning('[spare: %s] pool %s: making a spare failed: %s', uuid, pool.name, exc)
            self._remove(uuid, spec)
            return None
        finally:
            self._ready.pop(uuid, None)
            self._stopped.discard(uuid)
        self.made += 1
        LOG.info('[spare: %s] pool %s: spare %s in %.1f s (%d of %d)', uuid, pool.name,
                 'paused' if hot else 'saved', time.monotonic() - started,
                 self._spares.counts(hot=hot).get(pool.name, 0), pool.hot if hot else pool.size)
        return spare

    def _make(self, uuid: str, pool: poolsmod.Pool, spec: specmod.BootSpec,
              hot: bool) -> sparesmod.Spare:
        node = self._node
        disks = ()
        if spec.disk_gb:
            disks = (node.storage.create_root_disk(uuid, spec.disk_gb * storage_backend.GiB,
                                                   spec.image, spec.image_format),)
        if pool.seeded:     # its own identity: cloud-init in the spare runs as a first boot
            disks += (node.seeds.create(dataclasses.replace(spec, hostname='spare-' + uuid[:8])),)
        ready = self._ready[uuid] = threading.Event()
        jobs = self._jobs_created()
        self._go_on(jobs)
        node.driver.spawn_spare(spec, disks, pool.name)
        crashpoints.reached('spare.make.started', uuid)
        deadline = time.monotonic() + self._ready_timeout
        while not ready.wait(self._tick):
            self._go_on(jobs)
            if time.monotonic() > deadline:
                raise exception.AgentError('its guest did not become ready')
        if pool.seeded:
            # Saved only once cloud-init's first boot is over: a restore runs it again on the
            # instance's seed, and two runs at once would fight over the guest.
            status = guestmod.run(node.driver, uuid, ['/usr/bin/cloud-init', 'status', '--wait'],
                                  max(1.0, deadline - time.monotonic()), node.runtime.sleep,
                                  lambda: self._go_on(jobs))
            if status['exitcode'] != 0:
                raise exception.AgentError('cloud-init in the spare ended with %s: %s'
                                           % (status['exitcode'], status['out'][-300:].strip()))
        settled = time.monotonic() + self._settle
        while time.monotonic() < settled and uuid not in self._stopped:
            node.runtime.sleep(min(self._tick, max(0.0, settled - time.monotonic())))
            self._go_on(jobs)
        if uuid in self._stopped:
            raise exception.AgentError('its domain stopped')
        if hot:
            # Its memory stays taken (reserved, never overcommitted: refused if it does not
            # fit), its vCPUs are free; paused only then.
            node.reserve(uuid, spec.disk_gb, spec.memory_mb)
            image, xml = '', node.driver.pause_spare(uuid)
            crashpoints.reached('spare.hot.paused', uuid)
        else:
            image = self._spares.image_path(uuid)
            xml = node.driver.save_spare(uuid, image)
            crashpoints.reached('spare.save.saved', uuid)
            node.reserve(uuid, spec.disk_gb)      # its vCPUs and memory are free again
        spare = sparesmod.Spare(
            uuid=uuid, pool=pool.name, vcpus=spec.vcpus, memory_mb=spec.memory_mb,
            disk_gb=spec.disk_gb, disk=dataclasses.asdict(disks[0]) if disks else None,
            image=image, xml=xml, saved_at=time.time(), flavor=pool.fingerprint(),
            files=sparesmod.file_records(spec.files), hot=hot)
        self._spares.saved(spare)
        return spare

    def _go_on(self, jobs: int) -> None:
        """GaveWay if a job was accepted since ``jobs`` (a spare never competes with a storm)
        or the agent stops."""
        if self._stopping:
            raise GaveWay('the agent stops')
        if self._jobs_created() != jobs:
            raise GaveWay('a job started')

    def _remove(self, uuid: str, spec: specmod.BootSpec) -> None:
        node = self._node
        node.attempt(uuid, 'stop a failed spare', node.driver.remove_spare, uuid)
        if spec.disk_gb:
            node.attempt(uuid, 'remove a failed spare\'s disk', node.storage.delete_disks, uuid)
        self._spares.remove(uuid)
        node.release(uuid)

    def stats(self) -> dict:
        """Saved and hot spares by pool, made and failed."""
        return {'spares': self._spares.counts(), 'hot': self._spares.counts(hot=True),
                'made': self.made, 'failures': self.failures, 'gave_way': self.gave_way}
