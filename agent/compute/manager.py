"""The compute manager: wires the parts of the core (requests, tasks, power, events,
recovery, audits, and the warm part) around one shared ``Core``; the service and the RPC
endpoint call those parts directly. It routes the driver's events and makes the reports that
span parts."""
from agent import instancedir
from agent import journal as journalmod
from agent import metrics as metricsmod
from agent import resources
from agent import spec as specmod
from agent import trace as tracemod
from agent.compute import audits as auditsmod
from agent.compute import core as coremod
from agent.compute import events as eventsmod
from agent.compute import power as powermod
from agent.compute import recovery as recoverymod
from agent.compute import requests as requestsmod
from agent.compute import tasks as tasksmod
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver
from agent.warm import node as warmnode
from agent.warm import part as warmpart


class ComputeManager:
    """Validates requests, runs boot, delete, stop, start and reboot jobs, and keeps
    instance state from events."""

    def __init__(self, driver: vdriver.ComputeDriver, storage: storage_backend.StorageBackend,
                 runtime, reporter, limits: specmod.Limits, host: str,
                 journal: journalmod.JobJournal, dirs: instancedir.InstanceDirs,
                 allocation: resources.Allocation = resources.Allocation(),
                 job_retention: float = 3600.0, max_boot_attempts: int = 2,
                 reconnect_interval: float = 1.0, tracer: tracemod.NullTracer | None = None,
                 metrics: metricsmod.NullMetrics | None = None,
                 power: powermod.PowerOptions = powermod.PowerOptions(),
                 ready_within: float = 300.0, pools: dict | None = None,
                 warm: dict | None = None, seeds=None, images=None):
        """``pools``: name -> agent.warm.pools.Pool; ``warm``: the Filler's options
        (``[warm]``). With no pools no spare is made and a boot naming a pool is refused.
        ``seeds``: agent.storage.seeds.SeedDisks (without it a spec asking for a seed fails
        its boot); ``images``: agent.storage.imagecache.ImageCache (likewise for image_ref)."""
        self.core = core = coremod.Core(driver, storage, runtime, reporter, host, journal,
                                        dirs, allocation, job_retention, tracer,
                                        metrics, seeds, images)
        self.events = eventsmod.Events(core, ready_within=ready_within)
        # Warm boots: one part (agent.warm), given what it uses of the node.
        self.warm = warmpart.WarmPart(
            warmnode.Node(driver=driver, storage=storage, seeds=seeds, dirs=dirs,
                          runtime=runtime, claim=core.tracker.claim,
                          reserve=core.tracker.reserve, release=core.tracker.release,
                          attempt=core.attempt, activity=core.activity,
                          wait_ready=core.wait_ready, ready=self.events.became_itself),
            limits, pools, warm)
        self.tasks = tasksmod.Tasks(core, self.events, self.warm, reconnect_interval)
        self.power = powermod.Power(core, self.events, self.warm.introduce, power)
        self.audits = auditsmod.Audits(core, self.warm.making, self.warm.hot_memory)
        self.recovery = recoverymod.Recovery(core, self.events, self.tasks, self.power,
                                             self.audits, self.warm, max_boot_attempts)
        self.requests = requestsmod.Requests(core, self.tasks, self.power, self.warm, limits)
        self.facts: dict = {}
        driver.set_event_listener(self.handle_event)

    # -- what the service, the endpoint and the tests read --------------------------------
    @property
    def instances(self):
        """uuid -> Instance: what the node holds now."""
        return self.core.instances

    @property
    def tracker(self):
        """The resource tracker (claims, usage, audits)."""
        return self.core.tracker

    @property
    def jobs(self):
        """The job table (the journal's in-memory mirror)."""
        return self.core.jobs

    @property
    def journal(self):
        """The durable job journal."""
        return self.core.journal

    @property
    def instances_path(self) -> str:
        """Where the marked instance directories live."""
        return self.core.dirs.base

    @property
    def reconciled(self):
        """Counts of start-up actions and removed orphans."""
        return self.core.reconciled

    @property
    def recovering(self) -> bool:
        """Whether the hypervisor is lost, or back but not yet resynchronised."""
        return self.core.recovering

    # -- start-up and events ----------------------------------------------------------------
    def init_host(self) -> None:
        """Connect and reconcile (``Recovery.start_up``); keep the host facts."""
        with self.core.tracer.bind_track('start-up'):
            self.facts = self.recovery.start_up()

    def handle_event(self, event) -> None:
        """A driver event (the event bridge's (green)thread): the connection's go to
        recovery, a spare's to the warm part, an instance's to ``Events.handle``."""
        if isinstance(event, vdriver.HypervisorLost):
            self.recovery.hypervisor_lost()
        elif isinstance(event, vdriver.HypervisorReconnected):
            self.recovery.hypervisor_back()
        elif isinstance(event, vdriver.SpareEvent):
            self.warm.on_event(event)
        else:
            self.events.handle(event)
            if isinstance(event, vdriver.InstanceRebooted):
                # A reset guest (its own reboot too) forgot who it is: told again.
                inst = self.core.instances.get(event.uuid)
                if inst is not None and inst.delete_job is None:
                    self.warm.introduce(inst)

    def storage_report(self, uuids: list[str] | None = None) -> dict:
        """Capacity and the agent's disks, from one shared listing of the backend (``uuids``
        as checked by ``agent.rpc.schema``)."""
        storage = self.core.storage
        uuids = None if uuids is None else set(uuids)
        inventory = storage.inventory()
        return {'backend': storage.kind,
                'capacity': dict(storage.capacity(), instances=inventory.instance_bytes),
                'disks': {u: {'name': d.name, 'size': d.size} for u, d in inventory.disks.items()
                          if uuids is None or u in uuids}}

    def resource_report(self) -> dict:
        """The node's capacity and usage as last reported, with the tracker's counters."""
        return dict(self.core.tracker.snapshot(), stats=self.core.tracker.stats())

    def stats(self) -> dict:
        """Counters for ``get_stats``."""
        core = self.core
        return {'instances': len(core.instances), 'jobs_by_state': core.jobs.by_state(),
                'journal': core.journal.stats(), 'reconciled': dict(core.reconciled),
                'resources': core.tracker.stats(),
                'jobs_total': dict(core.jobs.counts), 'events_handled': self.events.handled,
                'warm': self.warm.stats()}
