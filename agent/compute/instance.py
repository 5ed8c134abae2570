"""An instance as the compute core holds it: one boot generation of a uuid."""
import dataclasses
import threading
import time

from agent.compute import states
from agent.virt import driver as vdriver


@dataclasses.dataclass
class Instance:
    """One instance of a uuid, from its boot request (or adoption) until it is deleted.

    ``vm_state`` changes only through ``Core.change`` (checked against ``states``); ``lock`` is
    held by the job working on the instance, so one job runs per instance at a time."""

    uuid: str
    name: str
    spec: dict
    vm_state: str = states.BUILDING
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
        """The instance as the RPC API and the state reports show it."""
        return {'uuid': self.uuid, 'name': self.name, 'vm_state': self.vm_state,
                'power_state': self.power_state, 'task': self.task, 'fault': self.fault,
                'boot_job': self.boot_job, 'delete_job': self.delete_job,
                'accepted_at': self.accepted_at,
                'active_at': self.active_at, 'updated_at': self.updated_at, 'seq': self.seq,
                'spec': self.spec}
