"""The request front end: validate, record, enqueue, answer at once (no request waits for
libvirt); and the read-only queries."""
import logging

from agent import exception
from agent import jobs as jobsmod
from agent import journal as journalmod
from agent import spec as specmod
from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.compute import tasks as tasksmod

LOG = logging.getLogger(__name__)

CONSOLE_BYTES = 64 * 1024          # get_console_output's default


class Requests:
    """Accepts boots and deletes as durable jobs and answers queries."""

    def __init__(self, core: coremod.Core, tasks: tasksmod.Tasks, limits: specmod.Limits):
        self._core = core
        self._tasks = tasks
        self.limits = limits

    # -- boot -------------------------------------------------------------------------------
    def boot_instance(self, raw_spec) -> dict:
        """Validate, claim, record the job; return ``{job_id, uuid}`` once it is on disk (or
        the existing job, ``existing``). The boot runs in its own (green)thread."""
        core = self._core
        request = core.tracer.request('boot_instance')
        with request.phase('validate'):
            spec = specmod.validate_boot_spec(raw_spec, self.limits)
            if not core.journal.room_again():
                raise exception.InsufficientResources(
                    resource='disk', reason='this node is out of disk space (its job journal '
                                            'runs on its reserve); only deletes are accepted')
        accepted = self._accept_boot(spec, request)
        if isinstance(accepted, dict):
            return accepted                       # the uuid's existing boot
        inst, job, ticket = accepted
        with request.phase('journal wait'):
            self._wait_recorded_boot(spec, inst, job, ticket)
        core.report(inst)
        LOG.debug('[instance: %s] boot accepted as job %s', spec.uuid, job.id)
        # Recorded before the job is spawned: the job's span follows the request's.
        core.metrics.request('boot_instance', request.finish(uuid=spec.uuid, job_id=job.id))
        core.runtime.spawn(self._tasks.run_boot, job, inst, spec)
        return {'job_id': job.id, 'uuid': spec.uuid}

    def _accept_boot(self, spec: specmod.BootSpec, request):
        """Under the lock: the existing boot's answer, or (instance, job, journal ticket)."""
        core = self._core
        with request.phase('lock wait'):
            core.lock.acquire()
        try:
            return self._accept_boot_locked(spec, request)
        finally:
            core.lock.release()

    def _accept_boot_locked(self, spec: specmod.BootSpec, request):
        core = self._core
        with request.phase('claim'):
            inst = core.instances.get(spec.uuid)
            if inst is not None:
                if inst.delete_job is not None:
                    raise exception.InstanceBusy(uuid=spec.uuid, state='being deleted')
                LOG.info('[instance: %s] boot repeated; returning the existing job', spec.uuid)
                return {'job_id': inst.boot_job, 'uuid': spec.uuid, 'existing': True}
            # From what the driver already knows (no call): a uuid held by a domain that is
            # not ours is refused before anything is recorded or made.
            core.driver.check_uuid_free(spec.uuid)
            # In-memory arithmetic only; a refusal leaves nothing recorded.
            core.tracker.claim(spec.uuid, spec.vcpus, spec.memory_mb, spec.disk_gb)
        inst = instancemod.Instance(uuid=spec.uuid, name=spec.name, spec=spec.to_dict(),
                                    task='spawning')
        # Held from here until the boot job ends: a delete that arrives meanwhile (even
        # while the job is being journaled) waits for the boot, never runs before it.
        inst.lock.acquire()
        job, ticket = core.jobs.create('boot', spec.uuid, spec=spec.to_dict())
        inst.boot_job = job.id
        core.instances[spec.uuid] = inst
        return inst, job, ticket

    def _wait_recorded_boot(self, spec: specmod.BootSpec, inst: instancemod.Instance,
                            job: jobsmod.Job, ticket: int) -> None:
        """Answer only once the job is on disk; undo everything if it never will be."""
        core = self._core
        try:
            core.journal.wait(ticket)
        except journalmod.JournalError as exc:
            if not core.journal.withdraw(job.id):
                # Its row may still land (and the boot then run after a restart): keep the
                # job, run it once the row is on disk, and tell the caller it is unknown.
                LOG.error('[instance: %s] boot job %s: journal outcome unknown (%s)',
                          spec.uuid, job.id, exc)
                core.runtime.spawn(self._tasks.boot_when_recorded, job, inst, spec, ticket)
                raise exception.AcceptanceUnknown(reason=str(exc), job_id=job.id,
                                                  uuid=spec.uuid) from None
            with core.lock:
                core.instances.pop(spec.uuid, None)
            core.tracker.release(spec.uuid)
            core.jobs.forget(job)        # never written: nothing of it exists
            inst.lock.release()
            raise exception.JournalUnavailable(reason=str(exc)) from None

    # -- delete -----------------------------------------------------------------------------
    def delete_instance(self, uuid) -> dict:
        """Accept a delete of the instance the node holds now; return at once.

        Deleting what the node does not hold records nothing (``job_id`` None): a flood of
        such deletes costs no state. A delete while one is accepted returns that job."""
        core = self._core
        uuid = specmod.validate_uuid(uuid)
        with core.lock:
            inst = core.instances.get(uuid)
            if inst is None:
                return {'job_id': None, 'uuid': uuid, 'existing': False}
            if inst.delete_job is not None:
                return {'job_id': inst.delete_job, 'uuid': uuid, 'existing': True}
            job, ticket = core.jobs.create('delete', uuid)
            inst.delete_job = job.id
        try:
            core.journal.wait(ticket)
        except journalmod.JournalError as exc:
            if not core.journal.withdraw(job.id):
                LOG.error('[instance: %s] delete job %s: journal outcome unknown (%s)', uuid,
                          job.id, exc)
                core.runtime.spawn(self._tasks.delete_when_recorded, job, inst, ticket)
                raise exception.AcceptanceUnknown(reason=str(exc), job_id=job.id,
                                                  uuid=uuid) from None
            with core.lock:
                inst.delete_job = None
            core.jobs.forget(job)
            raise exception.JournalUnavailable(reason=str(exc)) from None
        LOG.info('[instance: %s] delete accepted as job %s', uuid, job.id)
        core.change(inst, vm_state=states.DELETING)        # at once, even while its boot runs
        core.runtime.spawn(self._tasks.run_delete, job, inst)
        return {'job_id': job.id, 'uuid': uuid}

    # -- queries ----------------------------------------------------------------------------
    def get_job(self, job_id) -> dict:
        """A job as recorded (also from before a restart); JobNotFound."""
        return self._core.jobs.get(job_id).to_dict()

    def get_instance(self, uuid) -> dict:
        """An instance the node holds; InstanceNotFound."""
        uuid = specmod.validate_uuid(uuid)
        inst = self._core.instances.get(uuid)
        if inst is None:
            raise exception.InstanceNotFound(uuid=uuid)
        return inst.to_dict()

    def console_output(self, uuid, max_bytes: int | None = None) -> dict:
        """The last ``max_bytes`` (default CONSOLE_BYTES) of an instance's console log, read
        on the work queue; InstanceNotFound for an instance the node does not hold."""
        uuid = specmod.validate_uuid(uuid)
        if uuid not in self._core.instances:
            raise exception.InstanceNotFound(uuid=uuid)
        tail = self._core.driver.console_output(uuid, max_bytes or CONSOLE_BYTES)
        return dict(tail, uuid=uuid)

    def list_instances(self) -> list[dict]:
        """Every instance the node holds."""
        return [i.to_dict() for i in list(self._core.instances.values())]
