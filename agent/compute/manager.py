"""The compute manager: the one object the service and the RPC endpoint talk to. It wires
the parts of the core (requests, tasks, events, recovery, audits) around one shared
``Core`` and holds no logic of its own."""
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
from agent.warm import filler as fillermod


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
        # The parts call each other through these late-bound callables (recovery is made
        # last: it resumes jobs and audits).
        self.events = eventsmod.Events(core, lambda: self.recovery.hypervisor_lost(),
                                       lambda: self.recovery.hypervisor_back(),
                                       ready_within=ready_within)
        self.tasks = tasksmod.Tasks(core, self.events, lambda: self.recovery.recovering,
                                    reconnect_interval)
        self.power = powermod.Power(core, self.events, power)
        self.audits = auditsmod.Audits(
            core, lambda infos: self.recovery.without_failed_boot_remnants(infos))
        self.recovery = recoverymod.Recovery(core, self.events, self.tasks, self.power,
                                             self.audits, max_boot_attempts)
        self.requests = requestsmod.Requests(core, self.tasks, self.power, limits)
        core.pools = dict(pools or {})
        self.filler = fillermod.Filler(core, limits, **(warm or {}))
        self.facts: dict = {}
        driver.set_event_listener(self.events.handle)

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
        return self.recovery.recovering

    # -- start-up, requests, audits ---------------------------------------------------------
    def init_host(self) -> None:
        """Connect and reconcile (``Recovery.start_up``); keep the host facts."""
        with self.core.tracer.bind_track('start-up'):
            self.facts = self.recovery.start_up()

    def boot_instance(self, raw_spec) -> dict:
        """See ``Requests.boot_instance``."""
        return self.requests.boot_instance(raw_spec)

    def delete_instance(self, uuid) -> dict:
        """See ``Requests.delete_instance``."""
        return self.requests.delete_instance(uuid)

    def stop_instance(self, uuid, timeout: int | None = None) -> dict:
        """See ``Requests.stop_instance``."""
        return self.requests.stop_instance(uuid, timeout)

    def start_instance(self, uuid) -> dict:
        """See ``Requests.start_instance``."""
        return self.requests.start_instance(uuid)

    def reboot_instance(self, uuid, hard: bool = False) -> dict:
        """See ``Requests.reboot_instance``."""
        return self.requests.reboot_instance(uuid, hard)

    def get_job(self, job_id) -> dict:
        """See ``Requests.get_job``."""
        return self.requests.get_job(job_id)

    def get_instance(self, uuid) -> dict:
        """See ``Requests.get_instance``."""
        return self.requests.get_instance(uuid)

    def list_instances(self) -> list[dict]:
        """See ``Requests.list_instances``."""
        return self.requests.list_instances()

    def console_output(self, uuid, max_bytes: int | None = None) -> dict:
        """See ``Requests.console_output``."""
        return self.requests.console_output(uuid, max_bytes)

    def handle_event(self, event) -> None:
        """See ``Events.handle``."""
        self.events.handle(event)

    def audit(self, infos=None, inventory=None, token=None) -> list[str]:
        """See ``Audits.audit``."""
        return self.audits.audit(infos, inventory, token)

    def periodic_audit(self) -> list[str]:
        """See ``Audits.periodic_audit``."""
        return self.audits.periodic_audit()

    def run_audits(self, interval: float) -> None:
        """The periodic audit loop (``Audits.run``); run it in its own (green)thread."""
        self.audits.run(interval)

    def run_filler(self) -> None:
        """Keep the warm pools full (``Filler.run``); run it in its own (green)thread."""
        if self.core.pools:
            self.filler.run()

    def stop_filler(self) -> None:
        """No spare is made from now on; one being booted is removed first (``Filler.stop``)."""
        if self.core.pools:
            self.filler.stop()

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
                'warm': self.filler.stats()}
