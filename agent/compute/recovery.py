"""Recovery: the start-up reconciliation of the journal, the hypervisor and the storage (the
plan is ``agent.reconcile``'s), and the resynchronisation after a hypervisor reconnect.

An instance is recorded before its boot makes anything and dropped only after its delete
removed everything, so what no instance or job holds is an orphan and is removed.
"""
import logging

from agent import exception
from agent import jobs as jobsmod
from agent import reconcile
from agent import spec as specmod
from agent.compute import audits as auditsmod
from agent.compute import core as coremod
from agent.compute import events as eventsmod
from agent.compute import instance as instancemod
from agent.compute import power as powermod
from agent.compute import states
from agent.compute import tasks as tasksmod
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver
from agent.warm import part as warmpart

LOG = logging.getLogger(__name__)


class Recovery:
    """Start-up reconciliation, orphan removal, and the resync after the driver reconnected."""

    def __init__(self, core: coremod.Core, events: eventsmod.Events, tasks: tasksmod.Tasks,
                 power: powermod.Power, audits: auditsmod.Audits, warm: warmpart.WarmPart,
                 max_boot_attempts: int):
        self._core = core
        self._warm = warm
        self._events = events
        self._tasks = tasks
        self._power = power
        self._audits = audits
        self._max_boot_attempts = max_boot_attempts
        self._resync_running = False
        self._resync_again = False
        self._after_start: list[tuple] = []     # (fn, *args) to spawn once start-up ends
        self._handlers = {
            reconcile.FINISH_BOOT: self._finish_boot, reconcile.RESUME_BOOT: self._resume_boot,
            reconcile.FAIL_BOOT: self._fail_boot, reconcile.RESUME_DELETE: self._resume_delete,
            reconcile.RESUME_POWER: self._resume_power,
            reconcile.ADOPT: self._adopt, reconcile.RESTORE_ERROR: self._restore_error,
            reconcile.LOST: self._lost}

    # -- start-up ---------------------------------------------------------------------------
    def start_up(self) -> dict:
        """Connect, then reconcile the journal, the hypervisor and the storage (one listing
        each) and derive the resource usage from what is left. Returns the host facts."""
        core = self._core
        facts = core.driver.init_host()
        facts['storage'] = {'backend': core.storage.kind, **core.storage.init()}
        # Directories a create or removal left under their temporary names.
        swept = core.dirs.sweep()
        if swept:
            core.reconciled['interrupted_dirs'] += len(swept)
        tightened = core.dirs.tighten()
        if tightened:
            core.reconciled['dirs_tightened'] += tightened
        core.jobs.restore(core.journal.load())
        with self._audits.auditing() as token:      # begun before the listings it judges
            infos = core.driver.list_instances()
            inventory = core.storage.inventory(fresh=True)
            core.tracker.set_inventory(cpus=facts['cpus'], memory_mb=facts['memory_mb'],
                                       disk_gb=inventory.instance_bytes // storage_backend.GiB)
            changed, counts = self._warm.recover(infos, inventory)     # spares first
            self._after_start.append((self._warm.remove_leftovers,))
            core.reconciled.update({k: n for k, n in counts.items() if n})
            changed = self._reconcile(infos, inventory) or changed
            if changed:          # what the listings showed is no longer what exists
                self._audits.audit(self.resync(), token=token)
            else:
                self._audits.audit(self.resync(infos), inventory, token=token)
        # Only now what interrupted boots left is removed: removing a disk holds LVM's lock
        # for seconds (it is zeroed first), and the listing just read must not wait for it.
        for work in self._after_start:
            core.runtime.spawn(*work)
        self._after_start = []
        return facts

    def _reconcile(self, infos: list[vdriver.InstanceInfo], inventory) -> bool:
        """Carry out the start-up plan; True if it changed what libvirt or storage hold."""
        core = self._core
        domains = {i.uuid: i for i in infos if i.ours}
        running = {u for u, i in domains.items() if i.power_state == vdriver.RUNNING}
        spares = self._warm.held()      # neither instances nor orphans
        plan = reconcile.plan(core.jobs.all(), domains,
                              {u: d for u, d in inventory.disks.items() if u not in spares},
                              {u: d for u, d in core.dirs.owned().items() if u not in spares},
                              running, self._max_boot_attempts)
        changed = False
        for step in plan.steps:
            core.reconciled[step.action] += 1
            changed |= self._handlers[step.action](step) or False
        return self.remove_orphans(plan.orphan_disks, plan.orphan_dirs) or changed

    def _instance_from(self, step: reconcile.Step, **state) -> instancemod.Instance:
        """The instance of a step: its boot's spec from the journal, or (no record) what the
        domain's metadata says."""
        boot_job = step.boot.id if step.boot is not None else None
        if step.boot is not None and step.boot.spec:
            inst = instancemod.Instance.from_spec(specmod.BootSpec.from_dict(step.boot.spec),
                                                  boot_job=boot_job, **state)
        else:
            domain = step.domain
            inst = instancemod.Instance(
                uuid=step.uuid, name=(domain.name if domain is not None else '')
                or 'instance-%s' % step.uuid[:8], spec=None,
                sizes=dict((domain.sizes if domain is not None else None) or {}),
                boot_job=boot_job, **state)
        if step.domain is not None:
            inst.domain = step.domain.domain
        self._core.instances[step.uuid] = inst
        return inst

    def _remove_half_made_domain(self, step: reconcile.Step) -> None:
        """An interrupted boot's domain (not running): one libvirt call, done at start-up so
        that no listing judges it."""
        if step.remove_domain:
            self._core.attempt(step.uuid, 'remove half-made domain', self._core.driver.destroy,
                               step.uuid, job=step.job)

    def _remove_remnants_then(self, step: reconcile.Step, inst: instancemod.Instance,
                              spec: specmod.BootSpec | None = None) -> None:
        """Remove the disk and directory an interrupted boot made, then boot ``spec`` again
        (``run_boot`` releases ``inst.lock``) or, with none, release the lock. Run once
        start-up has ended: zeroing and removing a disk takes seconds, and start-up serves
        no request until it returns. The lock held meanwhile keeps a delete waiting."""
        core = self._core
        try:
            if (step.boot.spec or {}).get('disk_gb'):
                core.attempt(step.uuid, 'remove disk of an interrupted boot',
                             core.storage.delete_disks, step.uuid)
            core.dirs.remove(step.uuid)
        except BaseException:
            inst.lock.release()
            raise
        if spec is None:
            inst.lock.release()
        else:
            self._tasks.run_boot(step.job, inst, spec)

    def _finish_boot(self, step: reconcile.Step) -> None:
        LOG.info('[instance: %s] boot job %s was interrupted after the domain started: done',
                 step.uuid, step.job.id)
        inst = self._instance_from(step, vm_state=states.ACTIVE)
        if inst.spec is not None and inst.spec.pool:
            # A restore that went through: its domain may not have been made persistent.
            self._core.attempt(step.uuid, 'make the restored domain persistent',
                               self._core.driver.persist, step.uuid)
        self._core.jobs.finish(step.job)
        self._events.apply_listing(inst, step.domain, 'start-up')
        self._core.report(inst)

    def _resume_boot(self, step: reconcile.Step) -> bool:
        core = self._core
        LOG.warning('[instance: %s] boot job %s was interrupted by a restart; running it again '
                    '(attempt %d)', step.uuid, step.job.id, step.job.attempts + 1)
        self._remove_half_made_domain(step)
        inst = self._instance_from(step, task='spawning')
        inst.lock.acquire()          # new instance: free; released when its boot ends
        spec = inst.spec
        try:
            core.tracker.claim(spec.uuid, spec.vcpus, spec.memory_mb, spec.disk_gb)
        except exception.AgentError as exc:
            core.jobs.finish(step.job, 'interrupted by an agent restart; no longer fits: %s' % exc)
            core.change(inst, vm_state=states.ERROR, task=None, fault=step.job.reason)
            self._after_start.append((self._remove_remnants_then, step, inst))
            return True
        core.jobs.requeue(step.job)
        core.report(inst)
        self._after_start.append((self._remove_remnants_then, step, inst, spec))
        return True

    def _fail_boot(self, step: reconcile.Step) -> bool:
        reason = 'interrupted by agent restarts %d times; given up' % step.job.attempts
        LOG.error('[instance: %s] boot job %s %s', step.uuid, step.job.id, reason)
        self._remove_half_made_domain(step)
        inst = self._instance_from(step, vm_state=states.ERROR, fault=reason)
        inst.lock.acquire()
        self._core.jobs.finish(step.job, reason)
        self._core.report(inst)
        self._after_start.append((self._remove_remnants_then, step, inst))
        return True

    def _resume_delete(self, step: reconcile.Step) -> bool:
        LOG.warning('[instance: %s] delete job %s was interrupted by a restart; running it again',
                    step.uuid, step.job.id)
        inst = self._instance_from(step, vm_state=states.DELETING, task='deleting')
        inst.delete_job = step.job.id
        self._core.jobs.requeue(step.job)
        self._core.runtime.spawn(self._tasks.run_delete, step.job, inst)
        return True

    def _resume_power(self, step: reconcile.Step) -> None:
        """A stop, start or reboot interrupted by the restart: the instance as its domain is
        now, and the job runs again (``power``: re-run, or settled for a reboot)."""
        LOG.warning('[instance: %s] %s job %s was interrupted by a restart; running it again',
                    step.uuid, step.job.kind, step.job.id)
        inst = self._instance_from(step, vm_state=states.ACTIVE)
        self._events.apply_listing(inst, step.domain, 'start-up')
        inst.power_job, inst.task = step.job.id, states.TASKS[step.job.kind]
        self._core.jobs.requeue(step.job)
        self._core.report(inst)
        self._core.runtime.spawn(self._power.run, step.job, inst)

    def _adopt(self, step: reconcile.Step) -> None:
        if step.boot is None or step.boot.state != jobsmod.DONE:
            LOG.warning('[instance: %s] the hypervisor holds a domain of ours with no record in '
                        'the job journal: adopted and reported, not stopped', step.uuid)
        inst = self._instance_from(step, vm_state=states.ACTIVE)
        self._events.apply_listing(inst, step.domain, 'start-up')
        self._core.report(inst)

    def _restore_error(self, step: reconcile.Step) -> bool:
        core = self._core
        if step.remove_domain:
            LOG.warning('[instance: %s] removing the domain its failed boot left', step.uuid)
            core.attempt(step.uuid, 'remove domain of a failed boot', core.driver.destroy,
                         step.uuid, job=step.job)
        inst = self._instance_from(step, vm_state=states.ERROR, fault=step.job.reason)
        core.report(inst)
        return step.remove_domain

    def _lost(self, step: reconcile.Step) -> None:
        reason = 'the hypervisor no longer holds this instance'
        inst = self._instance_from(step, vm_state=states.ERROR, fault=reason)
        if step.job is not None and step.job.state not in jobsmod.FINISHED:
            self._core.jobs.finish(step.job, reason)     # an interrupted stop/start/reboot
        self._core.report(inst)

    # -- resync -----------------------------------------------------------------------------
    def resync(self, infos: list[vdriver.InstanceInfo] | None = None
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
        core = self._core
        before = {u: (i, i.seq) for u, i in list(core.instances.items())}
        if infos is None:
            # Readiness too: the agent-channel events of a gap in the connection are lost.
            infos = core.driver.list_instances(with_readiness=True)

        def unchanged(uuid: str) -> instancemod.Instance | None:
            inst, seq = before.get(uuid, (None, None))
            return inst if inst is not None and core.instances.get(uuid) is inst \
                and inst.seq == seq else None

        seen = set()
        kept = self._audits.without_failed_boot_remnants(infos)
        for info in kept:
            if not info.ours:
                continue
            seen.add(info.uuid)
            inst = unchanged(info.uuid)
            if inst is None:
                if info.uuid in before or info.uuid in core.instances:
                    continue      # deleted, booted or changed since the listing was read
                inst = instancemod.Instance(uuid=info.uuid, name=info.name, spec=None,
                                            sizes=dict(info.sizes or {}),
                                            vm_state=states.ACTIVE, domain=info.domain)
                core.instances[info.uuid] = inst
                LOG.info('[instance: %s] adopted from the hypervisor (%s)', info.uuid,
                         info.power_state)
            self._events.apply_listing(inst, info, 'resync')
        for uuid in before:
            inst = unchanged(uuid)
            if (inst is not None and uuid not in seen and inst.task is None
                    and inst.delete_job is None and inst.vm_state != states.ERROR):
                core.change(inst, vm_state=states.ERROR, power_state=vdriver.NOSTATE,
                            fault='the hypervisor no longer holds this instance')
        return kept

    def remove_orphans(self, disks, dirs) -> bool:
        """Remove the disks and marked directories of these uuids, which no instance or job
        holds. True if a disk was removed."""
        core = self._core
        removed = False
        for uuid in disks:
            LOG.warning('[instance: %s] removing its disk: no instance or job holds it', uuid)
            removed |= core.attempt(uuid, 'remove orphan disk', core.storage.delete_disks, uuid)
            core.reconciled['orphan_disks'] += 1
        for uuid in dirs:
            LOG.warning('[instance: %s] removing its directory: no instance or job holds it', uuid)
            core.dirs.remove(uuid)
            core.reconciled['orphan_dirs'] += 1
        return removed

    # -- after a reconnect -----------------------------------------------------------------
    def hypervisor_lost(self) -> None:
        """The driver lost the hypervisor (and reconnects by itself): jobs that must settle
        with libvirt wait until it is back and resynchronised."""
        LOG.warning('hypervisor connection lost; the driver reconnects')
        self._core.recovering = True

    def hypervisor_back(self) -> None:
        """The driver reconnected: resynchronise (one run at a time; a reconnect during a
        run makes it run once more)."""
        self._core.recovering = True
        self._resync_again = True
        if self._resync_running:
            return
        self._resync_running = True
        self._core.runtime.spawn(self._resync_loop)

    def _resync_loop(self) -> None:
        core = self._core
        try:
            while self._resync_again:
                self._resync_again = False
                with core.tracer.bind_track('reconnect'):
                    LOG.info('hypervisor reconnected; resynchronising instance states')
                    self._after_reconnect()
        finally:
            self._resync_running = False
            self._core.recovering = not core.driver.is_connected()

    def _after_reconnect(self) -> None:
        core = self._core
        with self._audits.auditing() as token:
            infos = self.resync()
            try:
                inventory = core.storage.inventory(fresh=True)
                spares = self._warm.held()
                removed = self.remove_orphans(
                    [u for u in inventory.disks if u not in core.instances and u not in spares],
                    [u for u in core.dirs.owned()
                     if u not in core.instances and u not in spares])
                self._audits.audit(infos, None if removed else inventory, token=token)
            except exception.AgentError as exc:
                LOG.warning('storage reconciliation after reconnect skipped: %s', exc)
