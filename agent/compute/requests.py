"""The request front end: validate, record, enqueue, answer at once (no request waits for
libvirt); and the read-only queries."""
import logging

from agent import exception
from agent import jobs as jobsmod
from agent import journal as journalmod
from agent import spec as specmod
from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import power as powermod
from agent.compute import states
from agent.compute import tasks as tasksmod
from agent.warm import part as warmpart

LOG = logging.getLogger(__name__)

CONSOLE_BYTES = 64 * 1024          # get_console_output's default


class Requests:
    """Accepts boots, deletes, stops, starts and reboots as durable jobs and answers
    queries."""

    def __init__(self, core: coremod.Core, tasks: tasksmod.Tasks, power: powermod.Power,
                 warm: warmpart.WarmPart, limits: specmod.Limits):
        self._core = core
        self._tasks = tasks
        self._power = power
        self._warm = warm
        self.limits = limits

    # -- boot -------------------------------------------------------------------------------
    def boot_instance(self, raw_spec) -> dict:
        """Validate, claim, record the job; return ``{job_id, uuid}`` once it is on disk (or
        the existing job, ``existing``). The boot runs in its own (green)thread."""
        core = self._core
        request = core.tracer.request('boot_instance')
        with request.phase('validate'):
            spec = specmod.validate_boot_spec(self._warm.apply(raw_spec), self.limits)
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
            if spec.uuid in self._warm.held():      # a spare's directory and disk
                raise exception.UuidInUse(uuid=spec.uuid, what='a spare of this node')
            # In-memory arithmetic only; a refusal leaves nothing recorded. A boot naming a
            # pool is handed its spare now: the spare's disk reservation becomes its claim.
            self._warm.hold(spec, lambda spare: core.tracker.claim(
                spec.uuid, spec.vcpus, spec.memory_mb, spec.disk_gb, instead_of=spare))
        inst = instancemod.Instance.from_spec(spec, task='spawning')
        # Held from here until the boot job ends: a delete that arrives meanwhile (even
        # while the job is being journaled) waits for the boot, never runs before it.
        inst.lock.acquire()
        job, ticket = core.jobs.create('boot', spec.uuid, spec=spec.to_dict())
        inst.boot_job = job.id
        core.instances[spec.uuid] = inst
        return inst, job, ticket

    def _wait_recorded(self, job: jobsmod.Job, ticket: int, undo, when_recorded) -> None:
        """Return once ``job``'s row is on disk. If the write failed: a row that can no
        longer land is withdrawn, ``undo()`` takes back what accepting the job changed, and
        JournalUnavailable is raised (nothing of it exists); a row that may still land is
        kept, ``when_recorded`` runs the job once it does, and AcceptanceUnknown is raised."""
        core = self._core
        try:
            core.journal.wait(ticket)
        except journalmod.JournalError as exc:
            if not core.journal.withdraw(job.id):
                LOG.error('[instance: %s] %s job %s: journal outcome unknown (%s)', job.uuid,
                          job.kind, job.id, exc)
                core.runtime.spawn(when_recorded)
                raise exception.AcceptanceUnknown(reason=str(exc), job_id=job.id,
                                                  uuid=job.uuid) from None
            undo()
            core.jobs.forget(job)
            raise exception.JournalUnavailable(reason=str(exc)) from None

    def _wait_recorded_boot(self, spec: specmod.BootSpec, inst: instancemod.Instance,
                            job: jobsmod.Job, ticket: int) -> None:
        """Answer only once the boot is on disk; undo everything if it never will be."""
        core = self._core

        def undo():
            with core.lock:
                core.instances.pop(spec.uuid, None)
            core.tracker.release(spec.uuid)
            self._warm.unhold(spec.uuid)      # its spare back to the pool
            inst.lock.release()

        self._wait_recorded(job, ticket, undo, lambda: self._tasks.boot_when_recorded(
            job, inst, spec, ticket))

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

        def undo():
            with core.lock:
                inst.delete_job = None

        self._wait_recorded(job, ticket, undo,
                            lambda: self._tasks.delete_when_recorded(job, inst, ticket))
        LOG.info('[instance: %s] delete accepted as job %s', uuid, job.id)
        core.change(inst, vm_state=states.DELETING)        # at once, even while its boot runs
        core.runtime.spawn(self._tasks.run_delete, job, inst)
        return {'job_id': job.id, 'uuid': uuid}

    # -- stop / start / reboot ------------------------------------------------------------------
    def stop_instance(self, uuid, timeout: int | None = None) -> dict:
        """Accept a stop: the guest gets ``timeout`` seconds (default ``[power]
        stop_timeout``, at most ``max_stop_timeout``; 0: at once) to power itself off after
        the ACPI power button, then the domain is stopped at once. See ``power``."""
        options = self._power.options
        timeout = options.stop_timeout if timeout is None else timeout
        if timeout > options.max_stop_timeout:
            raise exception.InvalidSpec(reason='timeout: at most %d seconds on this node'
                                        % options.max_stop_timeout)
        return self._accept_power(uuid, states.STOP, {'timeout': timeout})

    def start_instance(self, uuid) -> dict:
        """Accept a start of a stopped instance."""
        return self._accept_power(uuid, states.START, {})

    def reboot_instance(self, uuid, hard: bool = False) -> dict:
        """Accept a reboot: soft (the ACPI power button, a reset if the guest does not
        reboot in time) or ``hard`` (a reset now; a domain that does not run is started)."""
        return self._accept_power(uuid, states.HARD_REBOOT if hard else states.REBOOT,
                                  {'hard': bool(hard)})

    def _accept_power(self, uuid, operation: str, args: dict) -> dict:
        """Check the instance's state and that no job works on it, record the job and answer
        ``{job_id, uuid}`` once it is on disk; the same request while its job runs answers
        that job (``existing``). Refusals change and record nothing."""
        core = self._core
        uuid = specmod.validate_uuid(uuid)
        kind = 'reboot' if operation == states.HARD_REBOOT else operation
        request = core.tracer.request(kind + '_instance')
        with request.phase('claim'), core.lock:
            inst = core.instances.get(uuid)
            if inst is None:
                raise exception.InstanceNotFound(uuid=uuid)
            if inst.delete_job is not None:
                raise exception.InstanceBusy(uuid=uuid, state='being deleted')
            if inst.power_job is not None and inst.task == states.TASKS[operation]:
                running = core.jobs.get(inst.power_job)
                if running.kind == kind and running.spec == args:
                    return {'job_id': running.id, 'uuid': uuid, 'existing': True}
            if inst.task is not None:
                raise exception.InstanceBusy(uuid=uuid, state=inst.task)
            states.check_operation(uuid, inst.vm_state, operation)
            job, ticket = core.jobs.create(kind, uuid, spec=args)
            inst.power_job, inst.task = job.id, states.TASKS[operation]

        def undo():
            with core.lock:
                inst.power_job, inst.task = None, None

        with request.phase('journal wait'):
            self._wait_recorded(job, ticket, undo,
                                lambda: self._power_when_recorded(job, inst, ticket))
        core.report(inst)                     # the task reaches the conductor
        core.metrics.request(kind + '_instance', request.finish(uuid=uuid, job_id=job.id))
        core.runtime.spawn(self._power.run, job, inst)
        return {'job_id': job.id, 'uuid': uuid}

    def _power_when_recorded(self, job: jobsmod.Job, inst: instancemod.Instance,
                             ticket: int) -> None:
        self._core.journal.wait_landed(ticket)
        self._core.report(inst)
        self._power.run(job, inst)

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
