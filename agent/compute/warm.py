"""The warm path of a boot: restore one of its pool's saved spares as the instance.

The spare is handed out once (``SpareStore.take``) and recorded as the instance's before
anything of it changes; its disk becomes the instance's (the backend moves it under the
instance's name), then ONE hypervisor call restores it: the guest runs on from where it was
saved, already booted and ready. Whatever happens after the take, the spare is used up: its
memory image goes, and its reservation with it.
"""
import logging

from agent import crashpoints
from agent import exception
from agent import spec as specmod
from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.warm import spares as sparesmod

LOG = logging.getLogger(__name__)

MISS_EMPTY = 'warm: miss, pool empty'
READY_WAIT = 10.0          # seconds the job waits for a restored guest's ready event


class WarmBoots:
    """Restores spares as instances (``Tasks`` runs it inside a boot job)."""

    def __init__(self, core: coremod.Core):
        self._core = core

    def take(self, spec: specmod.BootSpec) -> sparesmod.Spare | None:
        """A spare for ``spec`` (which names a pool), or None when the pool has none."""
        return self._core.spares.take(spec.pool)

    def restore(self, inst: instancemod.Instance, spec: specmod.BootSpec,
                spare: sparesmod.Spare, disks_out: list) -> str:
        """Make ``inst`` from ``spare``; return the job's result. The instance's disk is put
        into ``disks_out`` as soon as it exists (the caller removes it if this raises)."""
        core = self._core
        core.spares.mark_taken(spare, inst.uuid)
        crashpoints.reached('spare.take.marked', inst.uuid, spare.uuid)
        try:
            if spare.disk is not None:
                disks_out.append(core.storage.adopt_disk(spare.uuid, inst.uuid))
            core.driver.restore_warm(spec, spare, tuple(disks_out))
            crashpoints.reached('spare.take.restored', inst.uuid, spare.uuid)
        finally:
            crashpoints.reached('spare.discard.removing', inst.uuid, spare.uuid)
            self.discard(spare, disk_left=spare.disk is not None and not disks_out)
        LOG.info('[instance: %s] restored from spare %s of pool %s', inst.uuid, spare.uuid,
                 spare.pool)
        core.send_identity(inst)
        # Off the way to ready: the domain is made persistent (stop and start keep it) once
        # the guest's ready event is in (it follows the restore at once), so the one call of
        # the warm path is the only one before ready. Failing leaves it running, transient.
        core.wait_until(inst, lambda: inst.readiness == states.READY, READY_WAIT)
        crashpoints.reached('warm.persist.before', inst.uuid)
        core.attempt(inst.uuid, 'make the restored domain persistent', core.driver.persist,
                     inst.uuid)
        return 'warm: hit, spare %s of pool %s' % (spare.uuid, spare.pool)

    def discard(self, spare: sparesmod.Spare, disk_left: bool) -> None:
        """What is left of a used spare: its disk if it was not handed over (``disk_left``),
        its directory (memory image, record, console), its reservation."""
        core = self._core
        if disk_left:
            core.attempt(spare.uuid, 'remove the disk of a used spare',
                         core.storage.delete_disks, spare.uuid)
        core.spares.remove(spare.uuid)
        core.tracker.release(spare.uuid)

    @staticmethod
    def failed_reason(exc: Exception) -> str:
        """The cold fallback's result after a restore that failed."""
        reason = str(exc) if isinstance(exc, exception.AgentError) else 'internal error: %s' % exc
        return 'cold (warm: restore failed: %s)' % reason
