"""The jobs that change an instance: boot and delete. One runs per instance at a time (the
instance's lock); a delete waits for a boot still in progress, then acts only on the instance
it was accepted for."""
import logging
import time

from agent import context
from agent import exception
from agent import jobs as jobsmod
from agent import spec as specmod
from agent.compute import core as coremod
from agent.compute import events as eventsmod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver
from agent.warm import part as warmpart

LOG = logging.getLogger(__name__)


class Tasks:
    """Runs boot and delete jobs."""

    def __init__(self, core: coremod.Core, events: eventsmod.Events, warm: warmpart.WarmPart,
                 reconnect_interval: float, settle_attempts: int = 5):
        self._core = core
        self._events = events
        self._warm = warm
        self._interval = reconnect_interval
        self._settle_attempts = settle_attempts

    # -- boot -----------------------------------------------------------------------------
    def run_boot(self, job: jobsmod.Job, inst: instancemod.Instance,
                 spec: specmod.BootSpec) -> None:
        """Run a boot job; the caller acquired ``inst.lock``, released here when it ends."""
        core = self._core
        start = core.tracer.now()
        try:
            with context.working(uuid=inst.uuid, calls=job.calls):
                self._boot(job, inst, spec)
        finally:
            end = core.tracer.now()
            core.tracer.complete('boot job', 'job', start, end, uuid=inst.uuid, job_id=job.id,
                                 state=job.state, attempt=job.attempts)
            core.metrics.boot_finished(end - start, job.state == jobsmod.DONE)
            inst.lock.release()

    def boot_when_recorded(self, job: jobsmod.Job, inst: instancemod.Instance,
                           spec: specmod.BootSpec, ticket: int) -> None:
        """A boot whose journal write was not confirmed in time: it runs once its row is on
        disk (a retry of the request meanwhile gets this job, ``existing``)."""
        self._core.journal.wait_landed(ticket)
        LOG.info('[instance: %s] boot job %s recorded late; running it', inst.uuid, job.id)
        self._core.report(inst)
        self.run_boot(job, inst, spec)

    def _boot(self, job: jobsmod.Job, inst: instancemod.Instance,
              spec: specmod.BootSpec) -> None:
        core = self._core
        core.jobs.start(job)
        disks: list = []
        result = None
        try:
            warm, result = self._warm.boot(inst, spec, disks)
            if not warm:
                self._cold(inst, spec, disks)
        except Exception as exc:
            self._boot_failed(job, inst, exc, tuple(disks))
            return
        core.jobs.finish(job, result=result)
        core.change(inst, task=None, domain=core.driver.domain_name(inst.uuid))
        LOG.debug('[instance: %s] boot job %s done (%d libvirt calls)', inst.uuid, job.id,
                  sum(job.calls.values()))

    def _cold(self, inst: instancemod.Instance, spec: specmod.BootSpec, disks: list) -> None:
        core = self._core
        # The files checked at the request are the ones used. (A spare uses none of them: it
        # was made from files of the same identity, which its take compares.)
        spec.recheck_files()
        if spec.image_ref is not None:
            if core.images is None:
                raise exception.StorageError(reason='this agent has no image cache')
            spec = core.images.resolve(spec)    # downloaded (once per node), pinned, checked
        if spec.disk_gb:
            disks.append(core.storage.create_root_disk(
                spec.uuid, spec.disk_gb * storage_backend.GiB, spec.image, spec.image_format))
            if spec.image_ref is not None and disks[-1].backing is None:
                core.images.unpin(spec.uuid)    # a copy (LVM): the disk needs no cached image
        if spec.seeded or self._warm.seeded(spec.pool):   # a cloud-init pool's: always
            if core.seeds is None:
                raise exception.StorageError(reason='this agent makes no seed disks')
            disks.append(core.seeds.create(spec))
        self._warm.introduce(inst, send=False)     # not ready before it answers: from now on
        core.driver.spawn(spec, tuple(disks))
        self._warm.introduce(inst)   # a pool's instance booted cold: the same devices too

    def _boot_failed(self, job: jobsmod.Job, inst: instancemod.Instance, exc: Exception,
                     disks: tuple) -> None:
        core = self._core
        if isinstance(exc, exception.AgentError):
            LOG.error('[instance: %s] boot failed: %s', inst.uuid, exc)
            reason = str(exc)
        else:   # a bug, not a user error: still end the job and clean up
            LOG.error('[instance: %s] boot failed unexpectedly', inst.uuid, exc_info=exc)
            reason = 'internal error: %s' % exc
        if (isinstance(exc, exception.HypervisorUnavailable)
                and self._settled_running(job, inst, reason)):
            return
        if any(d.readonly for d in disks):      # the seed first: the directory goes last
            core.attempt(inst.uuid, 'remove the seed of a failed boot',
                         core.seeds.delete, inst.uuid)
        if any(not d.readonly for d in disks):  # one that failed half-way: removed already
            core.attempt(inst.uuid, 'remove the disk of a failed boot',
                         core.storage.delete_disks, inst.uuid)
        if inst.spec is not None and inst.spec.image_ref is not None and core.images is not None:
            core.attempt(inst.uuid, 'unpin the image of a failed boot', core.images.unpin,
                         inst.uuid)
        core.tracker.release(inst.uuid)
        self._warm.unhold(inst.uuid)    # a spare it did not get to use: back to its pool
        core.jobs.finish(job, reason)
        core.change(inst, vm_state=states.ERROR if inst.delete_job is None else states.DELETING,
                    task=None, fault=reason)

    def _settled_running(self, job: jobsmod.Job, inst: instancemod.Instance,
                         reason: str) -> bool:
        """The connection went in the middle of the boot: the domain may or may not have been
        defined or started. The job stays running (the instance lock held) until libvirt is
        back; then True if the domain runs (the boot is done), else False after removing
        what the boot left in libvirt (the caller removes the disk and fails the job)."""
        LOG.warning('[instance: %s] libvirt went away during the boot (%s); settling it when '
                    'libvirt is back', inst.uuid, reason)
        core = self._core
        failures = 0
        while True:
            while not core.driver.is_connected() or core.recovering:
                core.driver.ensure_reconnecting()   # in case nothing announced the loss
                core.runtime.sleep(self._interval)
            try:
                power = core.driver.power_state(inst.uuid)
                if power == vdriver.RUNNING:
                    LOG.info('[instance: %s] the domain runs: the boot went through', inst.uuid)
                    core.jobs.finish(job)
                    core.change(inst, task=None)
                    self._events.apply_power(inst, power, 'settled', time.time())
                    return True
                core.driver.destroy(inst.uuid)   # domain (if any) and files
                return False
            except exception.HypervisorError as exc:
                # A restarted libvirtd may still hold the domain's state lock while it
                # finishes its own start-up work on it: try again a few times.
                failures += core.driver.is_connected()
                if failures >= self._settle_attempts:
                    LOG.error('[instance: %s] could not settle the boot: %s', inst.uuid, exc)
                    return False
                LOG.warning('[instance: %s] settling the boot failed (%s); retrying',
                            inst.uuid, exc)
                core.runtime.sleep(self._interval * 2 ** failures)

    # -- delete ---------------------------------------------------------------------------
    def run_delete(self, job: jobsmod.Job, inst: instancemod.Instance) -> None:
        """Run a delete job once any boot of ``inst`` has ended; only on ``inst`` itself."""
        core = self._core
        with inst.lock:   # waits for a boot still in progress
            if core.instances.get(inst.uuid) is not inst:
                # Only the instance it was accepted for: never a later boot of the uuid.
                core.jobs.start(job)
                core.jobs.finish(job)
                LOG.info('[instance: %s] delete job %s: its instance is already gone',
                         inst.uuid, job.id)
                return
            start = core.tracer.now()
            with context.working(uuid=inst.uuid, calls=job.calls):
                self._delete(job, inst)
            core.tracer.complete('delete job', 'job', start, core.tracer.now(), uuid=inst.uuid,
                                 job_id=job.id, state=job.state)

    def delete_when_recorded(self, job: jobsmod.Job, inst: instancemod.Instance,
                             ticket: int) -> None:
        """A delete whose journal write was not confirmed in time: it runs once recorded."""
        self._core.journal.wait_landed(ticket)
        self._core.change(inst, vm_state=states.DELETING)
        self.run_delete(job, inst)

    def _delete(self, job: jobsmod.Job, inst: instancemod.Instance) -> None:
        core = self._core
        core.jobs.start(job)
        core.change(inst, task='deleting', vm_state=states.DELETING)
        try:
            core.driver.destroy(inst.uuid)
            if inst.sizes.get('disk_gb') or (not inst.sizes
                                             and inst.uuid in core.storage.disks()):
                core.storage.delete_disks(inst.uuid)
        except exception.AgentError as exc:
            LOG.error('[instance: %s] delete failed: %s', inst.uuid, exc)
            core.jobs.finish(job, str(exc))
            inst.delete_job = None         # a later delete may try again
            core.change(inst, vm_state=states.ERROR, task=None, fault=str(exc))
            return
        with core.lock:
            core.instances.pop(inst.uuid, None)
        core.tracker.release(inst.uuid)
        core.jobs.finish(job)
        core.change(inst, vm_state=states.DELETED, power_state=vdriver.NOSTATE, task=None)
        LOG.info('[instance: %s] deleted', inst.uuid)
