"""An instance as the compute core holds it: one boot generation of a uuid."""
import dataclasses
import threading
import time

from agent import spec as specmod
from agent.compute import states
from agent.virt import driver as vdriver

SIZES = ('vcpus', 'memory_mb', 'disk_gb')


@dataclasses.dataclass
class Instance:
    """One instance of a uuid, from its boot request (or adoption) until it is deleted.

    ``vm_state`` changes only through ``Core.change`` (checked against ``states``); ``lock`` is
    held by the job working on the instance, so one job runs per instance at a time."""

    uuid: str
    name: str
    # The validated boot spec (``agent.spec.BootSpec``): from the request, or the journal's
    # record of it; None for an instance adopted from a domain with no record.
    spec: specmod.BootSpec | None
    # vcpus / memory_mb / disk_gb: the spec's, or what an adopted domain's metadata says
    # (empty if it says nothing).
    sizes: dict = dataclasses.field(default_factory=dict)
    vm_state: str = states.BUILDING
    power_state: str = vdriver.NOSTATE
    task: str | None = None   # spawning | deleting | stopping | starting | rebooting: a job works
    power_job: str | None = None      # the stop / start / reboot job accepted for it
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
    reboots: int = 0                  # guest resets seen (reboot events) since it was made
    # states.WAITING | READY | LATE while the domain runs (paused: kept), else None.
    readiness: str | None = None
    ready_at: float | None = None     # when its guest last became ready (this run)
    readies: int = 0                  # times its guest became ready since it was made
    domain: str | None = None         # the hypervisor's name (a warm one's is its spare's)
    readiness_event_at: float | None = None   # the last agent-channel event's time
    # Its guest has not yet acknowledged who it is (a pool instance's identity, sent at each
    # start and reset of its guest, or a restored one still becoming the instance): not ready.
    identity_pending: bool = False
    channel_open: bool | None = None   # its agent channel, as the last event or listing said
    ready_token: int = dataclasses.field(default=0, repr=False)   # the armed "late" timer
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    # Notified on every change (``Core.change``) and reboot event: what a job waits on.
    changed: threading.Condition = dataclasses.field(default_factory=threading.Condition,
                                                     repr=False)

    @classmethod
    def from_spec(cls, spec: specmod.BootSpec, **state) -> 'Instance':
        """A new instance of a validated boot spec."""
        return cls(uuid=spec.uuid, name=spec.name, spec=spec,
                   sizes={k: getattr(spec, k) for k in SIZES}, **state)

    def to_dict(self) -> dict:
        """The instance as the RPC API and the state reports show it."""
        return {'uuid': self.uuid, 'name': self.name, 'vm_state': self.vm_state,
                'power_state': self.power_state, 'task': self.task, 'fault': self.fault,
                'boot_job': self.boot_job, 'delete_job': self.delete_job,
                'power_job': self.power_job,
                'readiness': self.readiness, 'ready_at': self.ready_at, 'domain': self.domain,
                'accepted_at': self.accepted_at,
                'active_at': self.active_at, 'updated_at': self.updated_at, 'seq': self.seq,
                'sizes': dict(self.sizes),
                'spec': self.spec.to_dict() if self.spec is not None else None}
