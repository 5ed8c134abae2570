"""Instance state from the hypervisor's lifecycle events (no polling)."""
import logging
from typing import Callable

from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)


class Events:
    """Applies driver events to the instances; tells recovery when the hypervisor was lost
    and when it is back."""

    def __init__(self, core: coremod.Core, on_hypervisor_lost: Callable[[], None],
                 on_hypervisor_back: Callable[[], None]):
        self._core = core
        self._on_lost = on_hypervisor_lost
        self._on_back = on_hypervisor_back
        self.handled = 0

    def handle(self, event) -> None:
        """Apply one driver event. Runs in the event bridge's (green)thread."""
        self.handled += 1
        if isinstance(event, vdriver.HypervisorLost):
            LOG.warning('hypervisor connection lost; the driver reconnects')
            self._on_lost()
            return
        if isinstance(event, vdriver.HypervisorReconnected):
            self._on_back()
            return
        inst = self._core.instances.get(event.uuid)
        if inst is None:
            return
        if isinstance(event, vdriver.InstanceRebooted):
            LOG.info('[instance: %s] the guest was reset', inst.uuid)
            inst.reboots += 1
            self._core.notify(inst)      # a soft reboot waits for this
            return
        if isinstance(event, vdriver.InstanceVanished):
            if inst.task is None and inst.delete_job is None and inst.vm_state != states.DELETED:
                self._core.change(inst, vm_state=states.ERROR, power_state=vdriver.NOSTATE,
                                  fault='domain was undefined outside the agent')
            return
        self.apply_power(inst, event.power_state, event.cause, event.timestamp)

    def apply_power(self, inst: instancemod.Instance, power: str, cause: str,
                    when: float) -> None:
        """Bring ``inst`` in line with the hypervisor's ``power`` state (from an event, a
        listing or a settled boot); report it if anything changed."""
        changes = {'power_state': power}
        if inst.delete_job is None:
            vm_state = states.POWER_TO_VM.get(power)
            if vm_state is not None and not (inst.vm_state == states.ERROR
                                             and power != vdriver.RUNNING):
                changes['vm_state'] = vm_state
                if vm_state == states.ACTIVE:
                    changes['fault'] = None
                    if inst.active_at is None:
                        changes['active_at'] = when
        if all(getattr(inst, k) == v for k, v in changes.items()):
            return
        if 'active_at' in changes and cause not in ('start-up', 'resync'):   # a boot's start
            # One INFO line per boot (logging is a measurable share of the agent's CPU).
            LOG.info('[instance: %s] active %.2f s after the boot request (job %s)', inst.uuid,
                     when - inst.accepted_at, inst.boot_job)
            self._core.metrics.boot_active(when - inst.accepted_at)
            self._core.tracer.instant('ACTIVE', 'event', uuid=inst.uuid, cause=cause)
        else:
            LOG.info('[instance: %s] power %s -> %s (%s)', inst.uuid, inst.power_state, power,
                     cause)
        self._core.change(inst, **changes)
