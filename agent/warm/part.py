"""Warm boots as one part: the only object of ``agent.warm`` the compute core calls.

The core asks it to make a spec whole from the pool it names (``apply``), whether a uuid is a
spare's (``held``), to hand a boot a spare as it is accepted (``hold``: the spare's disk
reservation becomes the instance's disk claim, one claim), to boot the instance from it
(``boot``: restore it; a miss or a refused restore tells the job to boot cold), to tell a
pool instance's guest who it is whenever it starts or resets (``introduce``), to put the
spares in order at start-up (``recover``), and hands it the spares' events (``on_event``). The
filler (``run``, ``stop``) keeps the pools full in the background. What the part needs of the
node comes in a ``Node`` (``agent.warm.node``): it reads nothing of the core.

A spare is never handed out stale: its pool's flavor changed, a file it booted from is not
the one there now (device, inode, size, mtime), or it is older than ``max_spare_age``. Such a
spare is retired (removed in the background) at the take, at start-up, and by the filler.
"""
import logging
import threading
import time

from agent import exception
from agent import spec as specmod
from agent.virt import driver as vdriver
from agent.warm import filler as fillermod
from agent.warm import node as nodemod
from agent.warm import pools as poolsmod
from agent.warm import restore as restoremod
from agent.warm import spares as sparesmod

LOG = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 86400.0      # [warm] max_spare_age


class WarmPart:
    """Pools, saved spares, the filler that makes them and the restore that uses them."""

    def __init__(self, node: nodemod.Node, limits: specmod.Limits, pools: dict | None = None,
                 options: dict | None = None):
        """``pools``: name -> agent.warm.pools.Pool (none: no spare is ever made and a boot
        naming a pool is refused); ``options``: ``[warm]`` (max_spare_age, and the Filler's)."""
        options = dict(options or {})
        self._max_age = float(options.pop('max_spare_age', DEFAULT_MAX_AGE))
        self._node = node
        self._limits = limits
        self.pools: dict[str, poolsmod.Pool] = dict(pools or {})
        self.spares = sparesmod.SpareStore(node.dirs, node.runtime.workqueue.execute)
        self.filler = fillermod.Filler(node, self.spares, self.pools, limits,
                                       retire=self._retire_expired, **options)
        self._restorer = restoremod.Restorer(node, self.spares, self.pools, self.introduce,
                                             self.identity)
        self._held: dict[str, sparesmod.Spare] = {}     # instance uuid -> its spare
        self.retired = 0
        # Spares start-up did not keep: uuid -> whether it has a disk (``remove_leftovers``).
        self._leftovers: dict[str, bool] = {}
        self._leftovers_gone = threading.Event()

    # -- requests ---------------------------------------------------------------------------
    def apply(self, raw):
        """``raw`` made whole from the pool it names (``agent.warm.pools.apply``)."""
        return poolsmod.apply(raw, self.pools)

    def held(self) -> set[str]:
        """Uuids of spares saved, being made, or handed to a boot and not yet used up:
        neither instances nor orphans."""
        return (self.spares.reserved_uuids() | {s.uuid for s in list(self._held.values())}
                | set(self._leftovers))

    def hot_memory(self) -> dict[str, int]:
        """Hot spare uuid -> the memory its paused domain holds (MiB)."""
        return {s.uuid: s.memory_mb for s in self.spares.available() if s.hot}

    def making(self) -> set[str]:
        """Uuids of spares being made or removed (half-made: audits leave them alone)."""
        return set(self.spares.making) | set(self._leftovers)

    def introduce(self, inst, send: bool = True) -> None:
        """Tell the guest of pool instance ``inst`` who it is, on its identity port: each
        time its QEMU starts or its guest resets. It is not ready until it acknowledged
        (``inst.identity_pending``, cleared by its answer). ``send=False``: only that, before
        its QEMU starts (its agent channel's event could come before the send otherwise). A
        cloud-init pool's guest learns it from its seed instead; an instance of no pool has
        no port."""
        identity = self.identity(inst)
        if identity is None:
            return
        inst.identity_pending = True
        if send:
            self._node.attempt(inst.uuid, 'send the guest its identity',
                               self._node.driver.send_identity, inst.uuid, identity)

    def identity(self, inst) -> dict | None:
        """What the guest of ``inst`` is told on its identity port; None: nothing (a
        cloud-init pool's guest learns it from its seed, an instance of no pool has no
        port)."""
        spec = inst.spec
        if spec is None or not spec.pool or self.seeded(spec.pool):
            return None
        return {'uuid': inst.uuid, 'name': inst.name, 'pool': spec.pool}

    def seeded(self, pool: str | None) -> bool:
        """Whether ``pool``'s guests read a NoCloud seed (its instances booted cold too)."""
        found = self.pools.get(pool) if pool else None
        return found is not None and found.seeded

    # -- accepting a boot (under the core's lock: arithmetic only) --------------------------
    def hold(self, spec: specmod.BootSpec, claim) -> None:
        """Accept ``spec``'s claim: ``claim(instead_of)`` makes it, with ``instead_of`` the
        uuid of the fresh spare handed to this boot now (its disk reservation becomes the
        instance's disk claim in the same step), or None (no pool, or none left). If the
        claim raises, the spare goes back to its pool untouched."""
        spare = self._take_fresh(spec) if spec.pool else None
        try:
            claim(spare.uuid if spare is not None else None)
        except BaseException:
            if spare is not None:
                self.spares.give_back(spare)
            raise
        if spare is not None:
            self._held[spec.uuid] = spare

    def unhold(self, uuid: str) -> None:
        """The boot of ``uuid`` ends without its spare (not accepted after all, or failed
        before the restore; the instance's claim is released or kept by the caller): the
        spare goes back to its pool with its disk reserved again, or is retired if that no
        longer fits."""
        spare = self._held.pop(uuid, None)
        if spare is None:
            return
        try:
            self._node.reserve(spare.uuid, spare.disk_gb, spare.memory_mb if spare.hot else 0)
        except exception.AgentError as exc:
            self._retire(spare, 'no room to reserve its disk again (%s)' % exc)
            return
        self.spares.give_back(spare)

    def _take_fresh(self, spec: specmod.BootSpec) -> sparesmod.Spare | None:
        """The oldest spare of ``spec``'s pool that is not stale; stale ones met on the way
        are retired in the background (no I/O here)."""
        pool = self.pools.get(spec.pool)
        while True:
            spare = self.spares.take(spec.pool)
            if spare is None or pool is None:
                return spare
            why = spare.stale(pool.fingerprint(), spec.files, time.time(), self._max_age)
            if why is None:
                return spare
            self._node.runtime.spawn(self._retire, spare, why)

    def _retire(self, spare: sparesmod.Spare, why: str) -> None:
        """Remove a spare that is no longer handed out: its disk, directory, reservation."""
        LOG.info('[spare: %s] pool %s: retired: %s', spare.uuid, spare.pool, why)
        if spare.hot:
            self._node.attempt(spare.uuid, 'stop a retired hot spare',
                               self._node.driver.remove_spare, spare.uuid)
        self._restorer.discard(spare, disk_left=spare.disk is not None)
        self.retired += 1

    def _retire_expired(self) -> None:
        """The filler, while the node is quiet: retire spares older than max_spare_age."""
        for spare in self.spares.take_expired(time.time() - self._max_age):
            self._retire(spare, 'older than [warm] max_spare_age (%.0f s)' % self._max_age)

    # -- boot jobs --------------------------------------------------------------------------
    def boot(self, inst, spec: specmod.BootSpec, disks: list) -> tuple[bool, str | None]:
        """The warm path of ``inst``'s boot job: (True, result) once a spare became the
        instance; (False, result) when the job boots cold (no pool: result None; the pool
        had no spare, or libvirt refused its restore: the reason). The spare is the one
        handed to the boot at its accept (``hold``); a boot resumed after a restart takes
        one now. Disks made are put into ``disks`` (the job removes them if this raises). A
        lost connection raises: it is settled like a cold boot's."""
        if not spec.pool:
            return False, None
        spare = self._held.get(inst.uuid) or self._take_fresh(spec)
        if spare is None:
            LOG.info('[instance: %s] %s (%s): booting cold', inst.uuid, restoremod.MISS_EMPTY,
                     spec.pool)
            return False, restoremod.MISS_EMPTY
        self._held[inst.uuid] = spare       # its files are not orphans until it is used up
        try:
            return True, self._restorer.restore(inst, spec, spare, disks)
        except exception.HypervisorUnavailable:
            raise
        except exception.AgentError as exc:
            LOG.warning('[instance: %s] %s spare %s failed (%s): booting cold', inst.uuid,
                        'resuming' if spare.hot else 'restoring', spare.uuid, exc)
            if disks:       # the spare's, moved: the cold boot makes a fresh one
                self._node.storage.delete_disks(inst.uuid)
                disks.clear()
            return False, restoremod.Restorer.failed_reason(exc, spare.hot)
        finally:
            self._held.pop(inst.uuid, None)     # used up, whatever happened

    # -- events, start-up -------------------------------------------------------------------
    def on_event(self, event) -> None:
        """A spare's event (agent.virt.driver.SpareEvent): the filler waits on them; a hot
        spare whose domain stopped (killed, crashed) is retired."""
        if event.stopped:
            spare = self.spares.take_hot(event.uuid)   # a saved one's save stops it too
            if spare is not None:
                self._node.runtime.spawn(self._retire, spare, 'its paused domain stopped')
        self.filler.on_event(event)

    def recover(self, infos: list, inventory) -> tuple[bool, dict[str, int]]:
        """At start-up, before the instances are reconciled: keep the saved spares whose
        image and disk are there (their disks reserved) and the hot ones whose paused domain
        is there (their memory reserved too, if it still fits), not stale, as many of each
        as their pool (still configured) wants; remove everything else of spares: domains of
        spares being made or taken when the agent stopped, interrupted makes, spares a boot
        had taken, stale spares, spares no pool wants. ``infos``, ``inventory``: the driver's
        and the storage's listings. Returns (whether libvirt changed, counts for the start-up
        summary)."""
        node = self._node
        changed = False
        spare_domains = {i.uuid: i for i in infos if i.spare is not None}
        paused = {u for u, i in spare_domains.items() if i.power_state == vdriver.PAUSED}
        files = {}                  # pool -> its files as they are now
        for name, pool in self.pools.items():
            try:
                files[name] = poolsmod.check_pool(pool, self._limits).files
            except exception.AgentError as exc:
                LOG.warning('pool %s: its flavor cannot boot now (%s): its spares go', name,
                            exc)
        now = time.time()

        def wanted(spare: sparesmod.Spare, rank: int) -> bool:
            pool = self.pools.get(spare.pool)
            if pool is None or rank >= (pool.hot if spare.hot else pool.size) \
                    or spare.pool not in files:
                return False
            why = spare.stale(pool.fingerprint(), files[spare.pool], now, self._max_age)
            if why is not None:
                LOG.info('[spare: %s] pool %s: stale (%s)', spare.uuid, spare.pool, why)
            return why is None

        kept, broken = self.spares.load(set(inventory.disks), wanted, paused)
        for spare in kept:
            if spare.hot:
                try:        # its memory too: a hot spare that no longer fits goes
                    node.reserve(spare.uuid, spare.disk_gb, spare.memory_mb)
                except exception.AgentError as exc:
                    LOG.warning('[spare: %s] no room for this hot spare any more (%s)',
                                spare.uuid, exc)
                    self.spares.take_hot(spare.uuid)
                    broken.append(spare.uuid)
                    continue
                node.driver.keep_hot_spare(spare.uuid)
                spare_domains.pop(spare.uuid)
        for uuid, info in spare_domains.items():
            LOG.warning('[spare: %s] removing the domain of a spare whose making or take was '
                        'interrupted, or that is no longer wanted', uuid)
            changed |= node.attempt(uuid, 'remove a spare\'s domain',
                                    node.driver.remove_spare, uuid)
        kept = [s for s in kept if s.uuid not in broken]
        for uuid in broken:
            LOG.warning('[spare: %s] an incomplete, used or unwanted spare: removed after '
                        'start-up', uuid)
            self._leftovers[uuid] = uuid in inventory.disks
        for spare in kept:
            if spare.hot:
                continue
            try:
                node.reserve(spare.uuid, spare.disk_gb)
            except exception.AgentError as exc:
                LOG.warning('[spare: %s] no room for it any more (%s): kept, not counted',
                            spare.uuid, exc)
        return changed, {'spares_removed': len(broken), 'spares_kept': len(kept)}

    def remove_leftovers(self) -> None:
        """Once start-up has ended: remove the disks and directories of the spares
        ``recover`` did not keep, one after another (a disk is zeroed first: seconds each on
        LVM, which start-up, serving nothing yet, must not wait for). Until each is gone it
        is held (no orphan) and being made (not audited); no spare is made before all are
        gone (``run``): their room is the new ones'."""
        node = self._node
        try:
            for uuid, has_disk in list(self._leftovers.items()):
                try:
                    if has_disk:
                        node.attempt(uuid, 'remove the disk of a spare not kept',
                                     node.storage.delete_disks, uuid)
                    self.spares.remove(uuid)
                except Exception:
                    LOG.exception('[spare: %s] removing it failed', uuid)
                finally:
                    del self._leftovers[uuid]
        finally:
            self._leftovers_gone.set()

    def leftovers(self) -> set[str]:
        """Uuids of the spares start-up did not keep that are not removed yet."""
        return set(self._leftovers)

    # -- the filler -------------------------------------------------------------------------
    def run(self) -> None:
        """Keep the pools full (``Filler.run``), once what start-up did not keep is gone;
        run it in its own (green)thread."""
        if self.pools:
            self._leftovers_gone.wait()
            self.filler.run()

    def stop(self) -> None:
        """No spare is made from now on; one being booted is removed first."""
        if self.pools:
            self.filler.stop()

    def stats(self) -> dict:
        """Spares by pool, made, failed, retired (``get_stats`` manager.warm)."""
        return dict(self.filler.stats(), retired=self.retired)
