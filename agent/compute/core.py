"""What every part of the compute core shares: the instances and their lock, the jobs, the
hypervisor and storage, the resource tracker, and the one way an instance's state changes
(``change``: checked against ``agent.compute.states``, then reported to the conductor).

Plain code: ``runtime`` spawns and sleeps (greenthreads under the agent, threads in tests).
"""
import collections
import logging
import threading
import time

from agent import context
from agent import exception
from agent import instancedir
from agent import jobs as jobsmod
from agent import journal as journalmod
from agent import metrics as metricsmod
from agent import report as reportmod
from agent import resources
from agent import sequence
from agent import trace as tracemod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver
from agent.warm import node as warmnode

LOG = logging.getLogger(__name__)

SEQ_KEY = 'seq_reserved'
POWER_TASKS = frozenset(states.TASKS.values())


class Core:
    """The shared state of one node's compute core and the operations on it that every part
    needs. It runs no job and handles no request itself."""

    def __init__(self, driver: vdriver.ComputeDriver, storage: storage_backend.StorageBackend,
                 runtime, reporter, host: str, journal: journalmod.JobJournal,
                 dirs: instancedir.InstanceDirs, allocation: resources.Allocation,
                 job_retention: float, tracer: tracemod.NullTracer | None,
                 metrics: metricsmod.NullMetrics | None, seeds=None, images=None):
        self.driver = driver
        self.storage = storage
        self.seeds = seeds          # NoCloud seed disks (agent.storage.seeds)
        self.images = images        # the image cache (agent.storage.imagecache)
        self.runtime = runtime
        self.reporter = reporter
        self.host = host
        self.journal = journal
        self.dirs = dirs
        self.tracer = tracer or tracemod.NullTracer()
        self.metrics = metrics or metricsmod.NullMetrics()
        # seq of instance states and usage generations: strictly growing across restarts,
        # whatever the clock does (reserved in the journal).
        self.sequence = sequence.Sequence(
            journal.get_meta(SEQ_KEY), lambda v: journal.set_meta_now(SEQ_KEY, v),
            lambda v: journal.set_meta(SEQ_KEY, v))
        self.tracker = resources.ResourceTracker(host, allocation, reporter.update_resources,
                                                 next_generation=self.sequence.next)
        self.jobs = jobsmod.JobTable(journal, job_retention)
        self.instances: dict[str, instancemod.Instance] = {}
        self.lock = threading.Lock()        # guards ``instances`` (arithmetic only under it)
        self.reconciled = collections.Counter()    # start-up actions and removed orphans
        # The hypervisor is lost, or back but not yet resynchronised (Recovery sets it): jobs
        # that must settle with libvirt wait.
        self.recovering = False

    def change(self, inst: instancemod.Instance, **changes) -> None:
        """Change ``inst`` and report it. A ``vm_state`` change must be a transition of
        ``states`` (InstanceInvalidState, nothing changed, otherwise)."""
        if 'vm_state' in changes:
            states.check(inst.uuid, inst.vm_state, changes['vm_state'])
        for key, value in changes.items():
            setattr(inst, key, value)
        self.report(inst)
        self.notify(inst)

    @staticmethod
    def notify(inst: instancemod.Instance) -> None:
        """Wake the jobs waiting on ``inst`` (``wait_until``)."""
        with inst.changed:
            inst.changed.notify_all()

    def wait_until(self, inst: instancemod.Instance, predicate, timeout: float) -> bool:
        """Wait (no polling: woken by changes and events of ``inst``) until ``predicate()``
        holds, at most ``timeout`` seconds; whether it holds."""
        deadline = time.monotonic() + timeout
        with inst.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                inst.changed.wait(remaining)
        return True

    def wait_ready(self, inst: instancemod.Instance, timeout: float) -> bool:
        """Wait until the guest of ``inst`` is ready, at most ``timeout`` s; whether it is."""
        return self.wait_until(inst, lambda: inst.readiness == states.READY, timeout)

    def activity(self) -> warmnode.Activity:
        """Jobs accepted so far and whether a boot, delete or power job runs (the warm
        filler makes spares only while the node is quiet)."""
        return warmnode.Activity(
            accepted=self.jobs.counts[jobsmod.QUEUED],
            running=any(i.task or i.delete_job for i in list(self.instances.values())))

    def report(self, inst: instancemod.Instance) -> None:
        """Queue ``inst``'s current state for the conductor, with a new ``seq``."""
        inst.seq = self.sequence.next()
        inst.updated_at = time.time()
        self.reporter.update(reportmod.state(inst.to_dict(), self.host))

    def busy(self) -> set[str]:
        """The instances a boot or delete works on now: what they hold is half-made, so
        audits leave them alone. A stop, start or reboot changes neither domain nor disk:
        audits judge its instance like any other (a restart that resumes one counts it from
        the listing)."""
        return {i.uuid for i in list(self.instances.values())
                if (i.task and i.task not in POWER_TASKS) or i.delete_job}

    @staticmethod
    def attempt(uuid: str, what: str, fn, *args, job: jobsmod.Job | None = None) -> bool:
        """Run a clean-up step; log its failure instead of raising. True if it succeeded.
        With ``job``, its hypervisor calls count as that job's."""
        try:
            if job is None:
                fn(*args)
            else:
                with context.working(uuid=uuid, calls=job.calls):
                    fn(*args)
            return True
        except exception.AgentError as exc:
            LOG.error('[instance: %s] %s failed: %s', uuid, what, exc)
            return False
