"""Instance state from the hypervisor's lifecycle events, and guest readiness from its
agent-channel events (no polling).

Readiness: a domain that starts is ``waiting``; its guest opening the agent channel makes it
``ready`` (``ready_at``); closing it (a reboot) makes it ``waiting`` again; a wait longer than
``ready_within`` shows ``late`` (a timer per wait, not a poll); a paused guest keeps its
readiness; a domain that stops has none. A pool instance's guest is ready only once, too, it
acknowledged the identity sent to it at its start or reset (``identity_pending``; its clock
set with it), whichever of the two comes last.
"""
import logging
import time

from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)


class Events:
    """Applies an instance's driver events to it (the connection's own events go to
    ``Recovery``, a spare's to the warm part: ``ComputeManager.handle_event``)."""

    def __init__(self, core: coremod.Core, ready_within: float = 300.0):
        self._core = core
        self._ready_within = ready_within
        self.handled = 0

    def handle(self, event) -> None:
        """Apply one driver event. Runs in the event bridge's (green)thread."""
        self.handled += 1
        inst = self._core.instances.get(event.uuid)
        if inst is None:
            return
        if isinstance(event, vdriver.InstanceRebooted):
            LOG.info('[instance: %s] the guest was reset', inst.uuid)
            inst.reboots += 1
            self._core.notify(inst)      # a soft reboot waits for this
            return
        if isinstance(event, vdriver.GuestReadiness):
            inst.readiness_event_at = event.timestamp
            inst.channel_open = event.ready
            self.apply_ready(inst, event.ready, event.timestamp, event.cause)
            return
        if isinstance(event, vdriver.IdentityAcknowledged):
            self.identity_acknowledged(inst, event.timestamp, event.clock_skew)
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
        if power == vdriver.RUNNING and inst.readiness is None:
            changes['readiness'] = states.WAITING
        elif power not in (vdriver.RUNNING, vdriver.PAUSED):
            changes.update(readiness=None, ready_at=None)
            inst.channel_open = None        # its next start opens it anew
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
        if changes.get('readiness') == states.WAITING:
            self._arm_late(inst)

    def apply_listing(self, inst: instancemod.Instance, info: vdriver.InstanceInfo,
                      cause: str) -> None:
        """Bring ``inst`` in line with a listing's entry: power state, and readiness when the
        listing read the agent channel's state."""
        self.apply_power(inst, info.power_state, cause, time.time())
        # A channel event that came after the listing was read is newer than it (start-up
        # runs while events already arrive: a restore's "connected" follows it at once).
        if info.ready is not None and (inst.readiness_event_at is None
                                       or inst.readiness_event_at < info.listed_at):
            inst.channel_open = info.ready
            self.apply_ready(inst, info.ready, time.time(), cause)

    def identity_acknowledged(self, inst: instancemod.Instance, when: float,
                              skew: float) -> None:
        """The guest of ``inst`` answered the identity last sent to it, its clock ``skew``
        seconds from the host's: ready now if its agent channel is open (else when it opens)."""
        if not inst.identity_pending:
            return
        inst.identity_pending = False
        LOG.info('[instance: %s] the guest acknowledged its identity (its clock %+.1f s from '
                 "the host's)", inst.uuid, skew)
        if inst.channel_open:
            self.apply_ready(inst, True, when, 'identity acknowledged')

    def became_itself(self, inst: instancemod.Instance, when: float, cause: str) -> None:
        """A restored guest took on its instance's identity (agent.warm): ready now."""
        self.apply_ready(inst, True, when, cause)

    def apply_ready(self, inst: instancemod.Instance, ready: bool, when: float,
                    cause: str) -> None:
        """The guest of ``inst`` opened (``ready``) or closed its agent channel; from an event,
        or a listing's channel state (``cause`` 'start-up' / 'resync')."""
        if inst.delete_job is not None or inst.vm_state in (states.DELETING, states.DELETED):
            return
        if ready:
            if inst.readiness == states.READY or inst.identity_pending:
                return          # ready once it is itself, too (identity_acknowledged)
            if inst.readies == 0 and cause not in ('start-up', 'resync'):
                LOG.info('[instance: %s] ready %.2f s after the boot request', inst.uuid,
                         when - inst.accepted_at)
                self._core.metrics.boot_ready(when - inst.accepted_at)
                self._core.tracer.instant('READY', 'event', uuid=inst.uuid, cause=cause)
            else:
                LOG.info('[instance: %s] ready (%s)', inst.uuid, cause)
            self._core.change(inst, readiness=states.READY, ready_at=when,
                              readies=inst.readies + 1)
            return
        if inst.power_state != vdriver.RUNNING or inst.readiness == states.WAITING \
                or (inst.readiness == states.LATE and cause in ('start-up', 'resync')):
            return       # not running (no readiness), or already waiting
        LOG.info('[instance: %s] not ready: %s', inst.uuid, cause)
        self._core.change(inst, readiness=states.WAITING, ready_at=None)
        self._arm_late(inst)

    def _arm_late(self, inst: instancemod.Instance) -> None:
        """Show ``late`` if this wait for readiness lasts ``ready_within`` (one timer per
        wait; a later wait or a change of readiness disarms it)."""
        inst.ready_token += 1
        if self._ready_within > 0:
            self._core.runtime.spawn(self._late_after, inst, inst.ready_token)

    def _late_after(self, inst: instancemod.Instance, token: int) -> None:
        self._core.runtime.sleep(self._ready_within)
        if inst.ready_token != token or inst.readiness != states.WAITING \
                or self._core.instances.get(inst.uuid) is not inst:
            return
        LOG.warning('[instance: %s] not ready %d s after its start: its guest has not opened '
                    'the agent channel (%s)', inst.uuid, self._ready_within,
                    'readiness late; not an error')
        self._core.change(inst, readiness=states.LATE)
