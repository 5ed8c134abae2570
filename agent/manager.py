"""The compute manager: instances, their jobs, and the state that events drive.

Plain synchronous code. Concurrency comes from ``runtime`` (spawn, sleep): under the agent
these are greenthreads and ``threading`` primitives are green; in unit tests they are threads.

Instance vm_states: building -> active | error; active <-> paused | stopped; deleting -> gone.
A boot job ends ``done`` once the domain is started; the instance turns ``active`` when the
hypervisor's STARTED event arrives.
"""
import collections
import dataclasses
import logging
import threading
import time

from agent import exception
from agent import instancedir
from agent import jobs as jobsmod
from agent import journal as journalmod
from agent import metrics as metricsmod
from agent import reconcile
from agent import resources
from agent import sequence
from agent import spec as specmod
from agent import trace as tracemod
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)

BUILDING = 'building'
ACTIVE = 'active'
PAUSED = 'paused'
STOPPED = 'stopped'
DELETING = 'deleting'
DELETED = 'deleted'
ERROR = 'error'
SEQ_KEY = 'seq_reserved'

_POWER_TO_VM = {vdriver.RUNNING: ACTIVE, vdriver.PAUSED: PAUSED, vdriver.SHUTDOWN: STOPPED,
                vdriver.CRASHED: ERROR}


@dataclasses.dataclass
class Instance:
    uuid: str
    name: str
    spec: dict
    vm_state: str = BUILDING
    power_state: str = vdriver.NOSTATE
    task: str | None = None          # 'spawning' | 'deleting' while a job works on it
    fault: str | None = None
    boot_job: str | None = None
    # The delete accepted for this instance (this object: one boot generation of the uuid).
    # Set when the delete is accepted, even while the boot still runs; a second delete gets
    # the same job, and a delete never acts on a later instance of the same uuid.
    delete_job: str | None = None
    accepted_at: float = dataclasses.field(default_factory=time.time)
    active_at: float | None = None
    updated_at: float = dataclasses.field(default_factory=time.time)
    seq: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def to_dict(self) -> dict:
        return {'uuid': self.uuid, 'name': self.name, 'vm_state': self.vm_state,
                'power_state': self.power_state, 'task': self.task, 'fault': self.fault,
                'boot_job': self.boot_job, 'delete_job': self.delete_job,
                'accepted_at': self.accepted_at,
                'active_at': self.active_at, 'updated_at': self.updated_at, 'seq': self.seq,
                'spec': self.spec}


class ComputeManager:
    """Validates requests, runs boot/delete jobs, and keeps instance state from events."""

    def __init__(self, driver: vdriver.ComputeDriver, storage: storage_backend.StorageBackend,
                 runtime, reporter, limits: specmod.Limits, host: str,
                 journal: journalmod.JobJournal, instances_path: str,
                 allocation: resources.Allocation = resources.Allocation(),
                 job_retention: float = 3600.0, max_boot_attempts: int = 2,
                 reconnect_interval: float = 1.0, tracer: tracemod.NullTracer | None = None,
                 metrics: metricsmod.NullMetrics | None = None):
        self.driver = driver
        self.tracer = tracer or tracemod.NullTracer()
        self.metrics = metrics or metricsmod.NullMetrics()
        self.storage = storage
        self.runtime = runtime
        self.reporter = reporter
        # seq of instance states and usage generations: strictly growing across restarts,
        # whatever the clock does (reserved in the journal).
        self._sequence = sequence.Sequence(
            journal.get_meta(SEQ_KEY), lambda v: journal.set_meta_now(SEQ_KEY, v),
            lambda v: journal.set_meta(SEQ_KEY, v))
        self.tracker = resources.ResourceTracker(host, allocation, reporter.update_resources,
                                                 next_generation=self._sequence.next)
        self.limits = limits
        self.host = host
        self.journal = journal
        self.jobs = jobsmod.JobTable(journal, job_retention)
        self.instances_path = instances_path
        self._max_boot_attempts = max_boot_attempts
        self.reconciled = collections.Counter()    # start-up actions and removed orphans
        self.instances: dict[str, Instance] = {}
        self.facts: dict = {}
        self._lock = threading.Lock()
        self._reconnecting = False
        self._reconnect_interval = reconnect_interval
        self._settle_attempts = 5
        self.events_handled = 0
        driver.set_event_listener(self.handle_event)

    # -- start-up ---------------------------------------------------------------------------
    def init_host(self) -> None:
        """Connect, then reconcile the journal, the hypervisor and the storage (one listing
        each; see ``agent.reconcile``) and derive the resource usage from what is left."""
        with self.tracer.bind_track('start-up'):
            self._init_host()

    def _init_host(self) -> None:
        self.facts = self.driver.init_host()
        self.facts['storage'] = {'backend': self.storage.kind, **self.storage.init()}
        self.jobs.restore(self.journal.load())
        with self._auditing() as token:      # begun before the listings it judges
            infos = self.driver.list_instances()
            inventory = self.storage.inventory(fresh=True)
            self.tracker.set_inventory(cpus=self.facts['cpus'],
                                       memory_mb=self.facts['memory_mb'],
                                       disk_gb=inventory.instance_bytes // storage_backend.GiB)
            changed = self._reconcile(infos, inventory)
            if changed:          # what the listings showed is no longer what exists
                self.audit(self._resync(), token=token)
            else:
                self.audit(self._resync(infos), inventory, token=token)

    # -- reconciliation ---------------------------------------------------------------------
    def _reconcile(self, infos: list[vdriver.InstanceInfo], inventory) -> bool:
        """Carry out the start-up plan; True if it changed what libvirt or storage hold."""
        domains = {i.uuid: i for i in infos if i.ours}
        running = {u for u, i in domains.items() if i.power_state == vdriver.RUNNING}
        plan = reconcile.plan(self.jobs.all(), domains, inventory.disks,
                              instancedir.owned(self.instances_path), running,
                              self._max_boot_attempts)
        changed = False
        for step in plan.steps:
            self.reconciled[step.action] += 1
            changed |= getattr(self, '_reconcile_' + step.action)(step) or False
        return self._remove_orphans(plan.orphan_disks, plan.orphan_dirs) or changed

    @staticmethod
    def _try(uuid: str, what: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except exception.AgentError as exc:
            LOG.error('[instance: %s] %s failed: %s', uuid, what, exc)
            return False

    def _instance_from(self, step: reconcile.Step, **state) -> Instance:
        spec = step.boot.spec if step.boot is not None and step.boot.spec else None
        if spec is None:     # no journal record: what the domain's metadata says
            sizes = (step.domain.sizes if step.domain is not None else None) or {}
            spec = dict(sizes)
        name = spec.get('name') or (step.domain.name if step.domain is not None else '') \
            or 'instance-%s' % step.uuid[:8]
        inst = Instance(uuid=step.uuid, name=name, spec=spec,
                        boot_job=step.boot.id if step.boot is not None else None, **state)
        self.instances[step.uuid] = inst
        return inst

    def _remove_remnants(self, step: reconcile.Step) -> None:
        """What an interrupted boot made: its (not running) domain, disk and directory."""
        calls = step.job.calls
        if step.remove_domain:
            self._try(step.uuid, 'remove half-made domain', self.driver.destroy, step.uuid, calls)
        if (step.boot.spec or {}).get('disk_gb'):
            self._try(step.uuid, 'remove disk of an interrupted boot',
                      self.storage.delete_disks, step.uuid)
        instancedir.remove(self.instances_path, step.uuid)

    def _reconcile_finish_boot(self, step: reconcile.Step) -> None:
        LOG.info('[instance: %s] boot job %s was interrupted after the domain started: done',
                 step.uuid, step.job.id)
        inst = self._instance_from(step, vm_state=ACTIVE, power_state=vdriver.RUNNING)
        self.jobs.finish(step.job)
        self._report(inst)

    def _reconcile_resume_boot(self, step: reconcile.Step) -> bool:
        LOG.warning('[instance: %s] boot job %s was interrupted by a restart; running it again '
                    '(attempt %d)', step.uuid, step.job.id, step.job.attempts + 1)
        self._remove_remnants(step)
        spec = specmod.BootSpec.from_dict(step.job.spec)
        inst = self._instance_from(step, task='spawning')
        try:
            self.tracker.claim(spec.uuid, spec.vcpus, spec.memory_mb, spec.disk_gb)
        except exception.AgentError as exc:
            self.jobs.finish(step.job, 'interrupted by an agent restart; no longer fits: %s' % exc)
            self._set(inst, vm_state=ERROR, task=None, fault=step.job.reason)
            return True
        self.jobs.requeue(step.job)
        self._report(inst)
        inst.lock.acquire()          # new instance: free; _run_boot releases it
        self.runtime.spawn(self._run_boot, step.job, inst, spec)
        return True

    def _reconcile_fail_boot(self, step: reconcile.Step) -> bool:
        reason = 'interrupted by agent restarts %d times; given up' % step.job.attempts
        LOG.error('[instance: %s] boot job %s %s', step.uuid, step.job.id, reason)
        self._remove_remnants(step)
        inst = self._instance_from(step, vm_state=ERROR, fault=reason)
        self.jobs.finish(step.job, reason)
        self._report(inst)
        return True

    def _reconcile_resume_delete(self, step: reconcile.Step) -> bool:
        LOG.warning('[instance: %s] delete job %s was interrupted by a restart; running it again',
                    step.uuid, step.job.id)
        inst = self._instance_from(step, vm_state=DELETING, task='deleting')
        inst.delete_job = step.job.id
        self.jobs.requeue(step.job)
        self.runtime.spawn(self._run_delete, step.job, inst)
        return True

    def _reconcile_adopt(self, step: reconcile.Step) -> None:
        if step.boot is None or step.boot.state != jobsmod.DONE:
            LOG.warning('[instance: %s] the hypervisor holds a domain of ours with no record in '
                        'the job journal: adopted and reported, not stopped', step.uuid)
        inst = self._instance_from(step, vm_state=ACTIVE)
        self._apply_power(inst, step.domain.power_state, 'start-up', time.time())
        self._report(inst)

    def _reconcile_restore_error(self, step: reconcile.Step) -> bool:
        if step.remove_domain:
            LOG.warning('[instance: %s] removing the domain its failed boot left', step.uuid)
            self._try(step.uuid, 'remove domain of a failed boot', self.driver.destroy,
                      step.uuid, step.job.calls)
        inst = self._instance_from(step, vm_state=ERROR, fault=step.job.reason)
        self._report(inst)
        return step.remove_domain

    def _reconcile_lost(self, step: reconcile.Step) -> None:
        inst = self._instance_from(step, vm_state=ERROR,
                                   fault='the hypervisor no longer holds this instance')
        self._report(inst)

    def _resync(self, infos: list[vdriver.InstanceInfo] | None = None
                ) -> list[vdriver.InstanceInfo]:
        """Bring every instance's power state in line with one listing of the hypervisor,
        adopting the instances of ours it holds that the agent does not know, and removing
        domains left by failed boots. Returns what the listing holds after that (the audit
        that follows uses it too).

        Only the instances nothing changed while the listing was read are judged by it: a
        job or an event that came meanwhile is newer than the listing (a boot that ended
        then is not "no longer held"). ``infos`` handed in must be no older than the
        instances (start-up, where nothing else runs yet).
        """
        before = {u: (i, i.seq) for u, i in list(self.instances.items())}
        if infos is None:
            infos = self.driver.list_instances()

        def unchanged(uuid: str) -> Instance | None:
            inst, seq = before.get(uuid, (None, None))
            return inst if inst is not None and self.instances.get(uuid) is inst \
                and inst.seq == seq else None

        seen = set()
        kept = self._without_failed_boot_remnants(infos)
        for info in kept:
            if not info.ours:
                continue
            seen.add(info.uuid)
            inst = unchanged(info.uuid)
            if inst is None:
                if info.uuid in before or info.uuid in self.instances:
                    continue      # deleted, booted or changed since the listing was read
                inst = Instance(uuid=info.uuid, name=info.name, spec=dict(info.sizes or {}),
                                vm_state=ACTIVE)
                self.instances[info.uuid] = inst
                LOG.info('[instance: %s] adopted from the hypervisor (%s)', info.uuid,
                         info.power_state)
            self._apply_power(inst, info.power_state, 'resync', time.time())
        for uuid in before:
            inst = unchanged(uuid)
            if (inst is not None and uuid not in seen and inst.task is None
                    and inst.delete_job is None and inst.vm_state != ERROR):
                self._set(inst, vm_state=ERROR, power_state=vdriver.NOSTATE,
                          fault='the hypervisor no longer holds this instance')
        return kept

    def _without_failed_boot_remnants(self, infos: list[vdriver.InstanceInfo]
                                      ) -> list[vdriver.InstanceInfo]:
        """The listing less the domains of failed boots, which are removed."""
        kept = []
        for info in infos:
            inst = self.instances.get(info.uuid) if info.ours else None
            if inst is None or not self._remove_failed_boot_remnant(inst):
                kept.append(info)
        return kept

    def _remove_failed_boot_remnant(self, inst: Instance) -> bool:
        """A domain listed for an instance whose boot failed: the boot's undefine was lost
        with the connection (or its define's answer was). Remove it; the job stays failed."""
        if inst.task is not None or inst.vm_state != ERROR or inst.boot_job is None:
            return False
        try:
            job = self.jobs.get(inst.boot_job)
        except exception.JobNotFound:
            return False
        if job.state != jobsmod.FAILED:
            return False
        LOG.warning('[instance: %s] removing the domain its failed boot left', inst.uuid)
        return self._try(inst.uuid, 'remove domain of a failed boot', self.driver.destroy,
                         inst.uuid, job.calls)

    def _remove_orphans(self, disks, dirs) -> bool:
        """Remove the disks and marked directories of these uuids, which no instance or job
        holds. True if a disk was removed."""
        removed = False
        for uuid in disks:
            LOG.warning('[instance: %s] removing its disk: no instance or job holds it', uuid)
            removed |= self._try(uuid, 'remove orphan disk', self.storage.delete_disks, uuid)
            self.reconciled['orphan_disks'] += 1
        for uuid in dirs:
            LOG.warning('[instance: %s] removing its directory: no instance or job holds it', uuid)
            instancedir.remove(self.instances_path, uuid)
            self.reconciled['orphan_dirs'] += 1
        return removed

    # -- resource audit -----------------------------------------------------------------------
    def _busy(self) -> set[str]:
        """The instances a job works on now."""
        return {i.uuid for i in list(self.instances.values()) if i.task or i.delete_job}

    def _auditing(self):
        """Begin an audit before reading the listings it will judge (``audit(token=...)``)."""
        return self.tracker.auditing(busy=self._busy())

    def audit(self, infos: list[vdriver.InstanceInfo] | None = None,
              inventory: storage_backend.Inventory | None = None,
              token: resources.AuditToken | None = None) -> list[str]:
        """Re-derive usage from one hypervisor listing and one storage listing; correct the
        tracker where it differs (a report goes out only then). Returns the uuids corrected.

        Listings handed in need the ``token`` of an audit begun before they were read: a boot
        that ended between an older listing and the audit would otherwise be judged by a
        listing that never saw its domain.
        """
        if token is None:
            if infos is not None or inventory is not None:
                raise ValueError('an audit of listings handed in needs its token')
            with self._auditing() as token:
                return self.audit(token=token)
        if infos is None:
            infos = self.driver.list_instances()
        if inventory is None:
            inventory = self.storage.inventory(fresh=True)
        observed = {}
        for info in infos:
            if not info.ours:
                continue
            inst = self.instances.get(info.uuid)
            sizes = inst.spec if inst is not None and inst.spec else (info.sizes or {})
            observed[info.uuid] = resources.Amounts(sizes.get('vcpus', 0),
                                                    sizes.get('memory_mb', 0), 0)
        for uuid, disk in inventory.disks.items():
            held = observed.get(uuid, resources.Amounts())
            observed[uuid] = dataclasses.replace(held, disk_gb=-(-disk.size // storage_backend.GiB))
        return self.tracker.apply_audit(token, observed, self._busy(),
                                        disk_gb=inventory.instance_bytes // storage_backend.GiB)

    def periodic_audit(self) -> list[str]:
        """One pass of the periodic audit. Its listing also finds the domains failed boots
        could not remove, and removes them."""
        with self.tracer.bind_track('audit'), self._auditing() as token:
            infos = self._without_failed_boot_remnants(self.driver.list_instances())
            return self.audit(infos, token=token)

    def run_audits(self, interval: float) -> None:
        """The periodic audit loop; run it in its own (green)thread."""
        while True:
            self.runtime.sleep(interval)
            try:
                self.periodic_audit()
            except exception.AgentError as exc:
                LOG.warning('resource audit skipped: %s', exc)
            except Exception:
                LOG.exception('resource audit failed')

    # -- requests ---------------------------------------------------------------------------
    def boot_instance(self, raw_spec) -> dict:
        """Validate, record, enqueue; return at once with the job id."""
        now = self.tracer.now
        t_received = now()
        spec = specmod.validate_boot_spec(raw_spec, self.limits)
        if not self.journal.room_again():
            raise exception.InsufficientResources(
                resource='disk', reason='this node is out of disk space (its job journal '
                                        'runs on its reserve); only deletes are accepted')
        t_valid = now()
        with self._lock:
            t_locked = now()
            inst = self.instances.get(spec.uuid)
            if inst is not None:
                if inst.delete_job is not None:
                    raise exception.InstanceBusy(uuid=spec.uuid, state='being deleted')
                LOG.info('[instance: %s] boot repeated; returning the existing job', spec.uuid)
                return {'job_id': inst.boot_job, 'uuid': spec.uuid, 'existing': True}
            # From what the driver already knows (no call): a uuid held by a domain that is
            # not ours is refused before anything is recorded or made.
            self.driver.check_uuid_free(spec.uuid)
            # In-memory arithmetic only; a refusal leaves nothing recorded.
            self.tracker.claim(spec.uuid, spec.vcpus, spec.memory_mb, spec.disk_gb)
            t_claimed = now()
            inst = Instance(uuid=spec.uuid, name=spec.name, spec=spec.to_dict(), task='spawning')
            # Held from here until the boot job ends: a delete that arrives meanwhile (even
            # while the job is being journaled) waits for the boot, never runs before it.
            inst.lock.acquire()
            job, ticket = self.jobs.create('boot', spec.uuid, spec=spec.to_dict())
            inst.boot_job = job.id
            self.instances[spec.uuid] = inst
        t_journal = now()
        try:
            self.journal.wait(ticket)     # answered only once the job is on disk
        except journalmod.JournalError as exc:
            if not self.journal.withdraw(job.id):
                # Its row may still land (and the boot then run after a restart): keep the
                # job, run it once the row is on disk, and tell the caller it is unknown.
                LOG.error('[instance: %s] boot job %s: journal outcome unknown (%s)',
                          spec.uuid, job.id, exc)
                self.runtime.spawn(self._boot_when_recorded, job, inst, spec, ticket)
                raise exception.AcceptanceUnknown(reason=str(exc), job_id=job.id,
                                                  uuid=spec.uuid) from None
            with self._lock:
                self.instances.pop(spec.uuid, None)
            self.tracker.release(spec.uuid)
            self.jobs.forget(job)        # never written: nothing of it exists
            inst.lock.release()
            raise exception.JournalUnavailable(reason=str(exc)) from None
        t_journaled = now()
        self._report(inst)
        LOG.debug('[instance: %s] boot accepted as job %s', spec.uuid, job.id)
        t_answer = now()
        # Recorded before the job is spawned: the job's span follows the request's.
        self.metrics.request('boot_instance', t_answer - t_received)
        for name, start, end in (('validate', t_received, t_valid), ('lock wait', t_valid, t_locked),
                                 ('claim', t_locked, t_claimed),
                                 ('journal wait', t_journal, t_journaled)):
            self.tracer.complete(name, 'request', start, end, uuid=spec.uuid)
        self.tracer.complete('boot_instance', 'rpc', t_received, t_answer, uuid=spec.uuid,
                             job_id=job.id)
        self.runtime.spawn(self._run_boot, job, inst, spec)
        return {'job_id': job.id, 'uuid': spec.uuid}

    def delete_instance(self, uuid) -> dict:
        """Accept a delete of the instance the node holds now; return at once.

        Deleting what the node does not hold records nothing (``job_id`` None): a flood of
        such deletes costs no state. A delete while one is accepted returns that job."""
        uuid = specmod.validate_uuid(uuid)
        with self._lock:
            inst = self.instances.get(uuid)
            if inst is None:
                return {'job_id': None, 'uuid': uuid, 'existing': False}
            if inst.delete_job is not None:
                return {'job_id': inst.delete_job, 'uuid': uuid, 'existing': True}
            job, ticket = self.jobs.create('delete', uuid)
            inst.delete_job = job.id
        try:
            self.journal.wait(ticket)
        except journalmod.JournalError as exc:
            if not self.journal.withdraw(job.id):
                LOG.error('[instance: %s] delete job %s: journal outcome unknown (%s)', uuid,
                          job.id, exc)
                self.runtime.spawn(self._delete_when_recorded, job, inst, ticket)
                raise exception.AcceptanceUnknown(reason=str(exc), job_id=job.id,
                                                  uuid=uuid) from None
            with self._lock:
                inst.delete_job = None
            self.jobs.forget(job)
            raise exception.JournalUnavailable(reason=str(exc)) from None
        LOG.info('[instance: %s] delete accepted as job %s', uuid, job.id)
        self._set(inst, vm_state=DELETING)        # at once, even while its boot still runs
        self.runtime.spawn(self._run_delete, job, inst)
        return {'job_id': job.id, 'uuid': uuid}

    def _boot_when_recorded(self, job: jobsmod.Job, inst: Instance, spec, ticket: int) -> None:
        """A boot whose journal write was not confirmed in time: it runs once its row is on
        disk (a retry of the request meanwhile gets this job, ``existing``)."""
        self.journal.wait_landed(ticket)
        LOG.info('[instance: %s] boot job %s recorded late; running it', inst.uuid, job.id)
        self._report(inst)
        self._run_boot(job, inst, spec)

    def _delete_when_recorded(self, job: jobsmod.Job, inst: Instance, ticket: int) -> None:
        self.journal.wait_landed(ticket)
        self._set(inst, vm_state=DELETING)
        self._run_delete(job, inst)

    def get_job(self, job_id) -> dict:
        return self.jobs.get(job_id).to_dict()

    def get_instance(self, uuid) -> dict:
        uuid = specmod.validate_uuid(uuid)
        inst = self.instances.get(uuid)
        if inst is None:
            raise exception.InstanceNotFound(uuid=uuid)
        return inst.to_dict()

    def list_instances(self) -> list[dict]:
        return [i.to_dict() for i in list(self.instances.values())]

    # -- jobs -------------------------------------------------------------------------------
    def _run_boot(self, job: jobsmod.Job, inst: Instance, spec: specmod.BootSpec) -> None:
        """Run a boot job; the caller acquired ``inst.lock``, released here when it ends."""
        start = self.tracer.now()
        try:
            with self.tracer.bind(inst.uuid):
                self._boot(job, inst, spec)
        finally:
            end = self.tracer.now()
            self.tracer.complete('boot job', 'job', start, end, uuid=inst.uuid, job_id=job.id,
                                 state=job.state, attempt=job.attempts)
            self.metrics.boot_finished(end - start, job.state == jobsmod.DONE)
            inst.lock.release()

    def _boot(self, job: jobsmod.Job, inst: Instance, spec: specmod.BootSpec) -> None:
        self.jobs.start(job)
        try:
            disks = ()
            spec.recheck_files()      # the files checked at the request are the ones used
            if spec.disk_gb:
                disks = (self.storage.create_root_disk(
                    spec.uuid, spec.disk_gb * storage_backend.GiB, spec.image,
                    spec.image_format),)
            self.driver.spawn(spec, job.calls, disks)
        except Exception as exc:
            if isinstance(exc, exception.AgentError):
                LOG.error('[instance: %s] boot failed: %s', inst.uuid, exc)
                reason = str(exc)
            else:   # a bug, not a user error: still end the job and clean up
                LOG.exception('[instance: %s] boot failed unexpectedly', inst.uuid)
                reason = 'internal error: %s' % exc
            if (isinstance(exc, exception.HypervisorUnavailable)
                    and self._settled_running(job, inst, reason)):
                return
            if disks:   # a disk that failed half-way was removed by the backend
                self._try(inst.uuid, 'remove the disk of a failed boot',
                          self.storage.delete_disks, inst.uuid)
            self.tracker.release(inst.uuid)
            self.jobs.finish(job, reason)
            self._set(inst, vm_state=ERROR if inst.delete_job is None else DELETING, task=None,
                      fault=reason)
            return
        self.jobs.finish(job)
        self._set(inst, task=None)
        LOG.debug('[instance: %s] boot job %s done (%d libvirt calls)', inst.uuid, job.id,
                  sum(job.calls.values()))

    def _settled_running(self, job: jobsmod.Job, inst: Instance, reason: str) -> bool:
        """The connection went in the middle of the boot: the domain may or may not have been
        defined or started. The job stays running (the instance lock held) until libvirt is
        back; then True if the domain runs (the boot is done), else False after removing
        what the boot left in libvirt (the caller removes the disk and fails the job)."""
        LOG.warning('[instance: %s] libvirt went away during the boot (%s); settling it when '
                    'libvirt is back', inst.uuid, reason)
        failures = 0
        while True:
            while not self.driver.is_connected() or self._reconnecting:
                self._start_reconnect()     # in case no close event announced the loss
                self.runtime.sleep(self._reconnect_interval)
            try:
                power = self.driver.power_state(inst.uuid, job.calls)
                if power == vdriver.RUNNING:
                    LOG.info('[instance: %s] the domain runs: the boot went through', inst.uuid)
                    self.jobs.finish(job)
                    self._set(inst, task=None)
                    self._apply_power(inst, power, 'settled', time.time())
                    return True
                self.driver.destroy(inst.uuid, job.calls)   # domain (if any) and files
                return False
            except exception.HypervisorError as exc:
                # A restarted libvirtd may still hold the domain's state lock while it
                # finishes its own start-up work on it: try again a few times.
                failures += self.driver.is_connected()
                if failures >= self._settle_attempts:
                    LOG.error('[instance: %s] could not settle the boot: %s', inst.uuid, exc)
                    return False
                LOG.warning('[instance: %s] settling the boot failed (%s); retrying',
                            inst.uuid, exc)
                self.runtime.sleep(self._reconnect_interval * 2 ** failures)

    def _run_delete(self, job: jobsmod.Job, inst: Instance) -> None:
        with inst.lock:   # waits for a boot still in progress
            if self.instances.get(inst.uuid) is not inst:
                # Only the instance it was accepted for: never a later boot of the uuid.
                self.jobs.start(job)
                self.jobs.finish(job)
                LOG.info('[instance: %s] delete job %s: its instance is already gone',
                         inst.uuid, job.id)
                return
            start = self.tracer.now()
            with self.tracer.bind(inst.uuid):
                self._delete(job, inst)
            self.tracer.complete('delete job', 'job', start, self.tracer.now(), uuid=inst.uuid,
                                 job_id=job.id, state=job.state)

    def _delete(self, job: jobsmod.Job, inst: Instance) -> None:
        self.jobs.start(job)
        self._set(inst, task='deleting', vm_state=DELETING)
        try:
            self.driver.destroy(inst.uuid, job.calls)
            if inst.spec.get('disk_gb') or (not inst.spec and inst.uuid in self.storage.disks()):
                self.storage.delete_disks(inst.uuid)
        except exception.AgentError as exc:
            LOG.error('[instance: %s] delete failed: %s', inst.uuid, exc)
            self.jobs.finish(job, str(exc))
            inst.delete_job = None         # a later delete may try again
            self._set(inst, vm_state=ERROR, task=None, fault=str(exc))
            return
        with self._lock:
            self.instances.pop(inst.uuid, None)
        self.tracker.release(inst.uuid)
        self.jobs.finish(job)
        self._set(inst, vm_state=DELETED, power_state=vdriver.NOSTATE, task=None)
        LOG.info('[instance: %s] deleted', inst.uuid)

    def storage_report(self, uuids: list[str] | None = None) -> dict:
        """Capacity and the agent's disks, from one shared listing of the backend (``uuids``
        as checked by ``agent.rpc.schema``)."""
        uuids = None if uuids is None else set(uuids)
        inventory = self.storage.inventory()
        return {'backend': self.storage.kind,
                'capacity': dict(self.storage.capacity(), instances=inventory.instance_bytes),
                'disks': {u: {'name': d.name, 'size': d.size} for u, d in inventory.disks.items()
                          if uuids is None or u in uuids}}

    def resource_report(self) -> dict:
        """The node's capacity and usage as last reported, with the tracker's counters."""
        return dict(self.tracker.snapshot(), stats=self.tracker.stats())

    # -- events -----------------------------------------------------------------------------
    def handle_event(self, event) -> None:
        """Apply one driver event. Runs in the event bridge's (green)thread."""
        self.events_handled += 1
        if isinstance(event, vdriver.HypervisorLost):
            LOG.warning('hypervisor connection lost; reconnecting')
            self._start_reconnect()
            return
        inst = self.instances.get(event.uuid)
        if inst is None:
            return
        if isinstance(event, vdriver.InstanceVanished):
            if inst.task is None and inst.delete_job is None and inst.vm_state != DELETED:
                self._set(inst, vm_state=ERROR, power_state=vdriver.NOSTATE,
                          fault='domain was undefined outside the agent')
            return
        self._apply_power(inst, event.power_state, event.cause, event.timestamp)

    def _apply_power(self, inst: Instance, power: str, cause: str, when: float) -> None:
        changes = {'power_state': power}
        if inst.delete_job is None:
            vm_state = _POWER_TO_VM.get(power)
            if vm_state is not None and not (inst.vm_state == ERROR and power != vdriver.RUNNING):
                changes['vm_state'] = vm_state
                if vm_state == ACTIVE:
                    changes['fault'] = None
                    if inst.active_at is None:
                        changes['active_at'] = when
        if all(getattr(inst, k) == v for k, v in changes.items()):
            return
        if 'active_at' in changes and cause not in ('start-up', 'resync'):   # a boot's start
            # One INFO line per boot (logging is a measurable share of the agent's CPU).
            LOG.info('[instance: %s] active %.2f s after the boot request (job %s)', inst.uuid,
                     when - inst.accepted_at, inst.boot_job)
            self.metrics.boot_active(when - inst.accepted_at)
            self.tracer.instant('ACTIVE', 'event', uuid=inst.uuid, cause=cause)
        else:
            LOG.info('[instance: %s] power %s -> %s (%s)', inst.uuid, inst.power_state, power,
                     cause)
        self._set(inst, **changes)

    # -- reconnect --------------------------------------------------------------------------
    def _start_reconnect(self) -> None:
        if self._reconnecting:
            return
        self._reconnecting = True
        self.runtime.spawn(self._reconnect_loop)

    def _reconnect_loop(self) -> None:
        with self.tracer.bind_track('reconnect'):
            self._reconnect()

    def _reconnect(self) -> None:
        try:
            while True:
                try:
                    self.driver.reconnect()
                    break
                except exception.AgentError as exc:
                    LOG.info('reconnect failed (%s); retrying', exc)
                    self.runtime.sleep(self._reconnect_interval)
            LOG.info('hypervisor reconnected; resynchronising instance states')
            with self._auditing() as token:
                infos = self._resync()
                try:
                    # An instance is recorded before its boot makes anything and dropped only
                    # after its delete removed everything: what no instance holds is an orphan.
                    inventory = self.storage.inventory(fresh=True)
                    removed = self._remove_orphans(
                        [u for u in inventory.disks if u not in self.instances],
                        [u for u in instancedir.owned(self.instances_path)
                         if u not in self.instances])
                    self.audit(infos, None if removed else inventory, token=token)
                except exception.AgentError as exc:
                    LOG.warning('storage reconciliation after reconnect skipped: %s', exc)
        finally:
            self._reconnecting = False

    # -- state ------------------------------------------------------------------------------
    def _set(self, inst: Instance, **changes) -> None:
        for key, value in changes.items():
            setattr(inst, key, value)
        self._report(inst)

    def _report(self, inst: Instance) -> None:
        inst.seq = self._sequence.next()
        inst.updated_at = time.time()
        state = inst.to_dict()
        state.pop('spec')
        state['host'] = self.host
        self.reporter.update(state)

    def stats(self) -> dict:
        return {'instances': len(self.instances), 'jobs_by_state': self.jobs.by_state(),
                'journal': self.journal.stats(), 'reconciled': dict(self.reconciled),
                'resources': self.tracker.stats(),
                'jobs_total': dict(self.jobs.counts), 'events_handled': self.events_handled}
