"""The hypervisor driver contract, and the generic events drivers emit.

The manager only sees these types; libvirt specifics stay in ``agent.virt.libvirt``.
"""
import abc
import dataclasses
from typing import Callable

from agent import spec as specmod

# Power states, as reported to the conductor.
RUNNING = 'running'
PAUSED = 'paused'
SHUTDOWN = 'shutdown'
CRASHED = 'crashed'
NOSTATE = 'nostate'


@dataclasses.dataclass(frozen=True)
class PowerStateChanged:
    """The instance's power state changed (a lifecycle event)."""
    uuid: str
    power_state: str
    cause: str          # e.g. 'started', 'stopped/shutdown' (libvirt event/detail names)
    timestamp: float


@dataclasses.dataclass(frozen=True)
class InstanceVanished:
    """The hypervisor no longer holds the instance (undefined behind the agent's back)."""

    uuid: str
    timestamp: float


@dataclasses.dataclass(frozen=True)
class InstanceRebooted:
    """The guest was reset: a reboot (the guest's own, a soft reboot's or a hard one's)."""

    uuid: str
    timestamp: float


@dataclasses.dataclass(frozen=True)
class GuestReadiness:
    """The guest became ready (it opened its agent channel) or stopped being ready (it
    closed it: a reboot, a guest agent stopped, or the domain started anew)."""

    uuid: str
    ready: bool
    cause: str
    timestamp: float


@dataclasses.dataclass(frozen=True)
class IdentityAcknowledged:
    """The guest took on the identity last sent to it (``send_identity``) and set its clock:
    ``clock_skew``, its clock minus the host's when it answered (seconds)."""

    uuid: str
    clock_skew: float
    timestamp: float


@dataclasses.dataclass(frozen=True)
class SpareEvent:
    """Something happened to a spare being made: its guest became ready (``ready`` True) or
    closed its channel (False), or its domain stopped (``stopped``)."""

    uuid: str
    timestamp: float
    ready: bool | None = None
    stopped: bool = False


@dataclasses.dataclass(frozen=True)
class HypervisorLost:
    """The connection to the hypervisor broke; the driver is reconnecting by itself."""

    timestamp: float


@dataclasses.dataclass(frozen=True)
class HypervisorReconnected:
    """The driver has a new connection (events registered again). What happened while it
    was away is unknown: the core resynchronises."""

    timestamp: float


@dataclasses.dataclass(frozen=True)
class InstanceInfo:
    """One instance the hypervisor holds, as returned by ``list_instances``."""

    uuid: str
    name: str
    power_state: str
    ours: bool          # created by this agent (recognised by its metadata)
    sizes: dict | None = None   # vcpus/memory_mb/disk_gb from the metadata, when it was read
    ready: bool | None = None   # the guest holds its agent channel open (None: not read)
    domain: str = ''            # the hypervisor's name for it (a warm one's is its spare's)
    spare: str | None = None    # a spare's pool (a spare is no instance: ``ours`` is False)
    listed_at: float = 0.0      # when the listing was asked for (what came after is newer)


class ComputeDriver(abc.ABC):
    """What the manager needs from a hypervisor.

    Every method may block (it runs its hypervisor calls on the work queue); none may be
    called from the hypervisor's own event thread. Errors are agent exceptions only.
    """

    @abc.abstractmethod
    def init_host(self) -> dict:
        """Connect, start receiving events, read and cache the host facts; return them."""

    @abc.abstractmethod
    def set_event_listener(self, listener: Callable[[object], None]) -> None:
        """Deliver PowerStateChanged / InstanceVanished / InstanceRebooted / HypervisorLost /
        HypervisorReconnected to ``listener``, one at a time, in the manager's concurrency
        context (a greenthread)."""

    @abc.abstractmethod
    def spawn(self, spec: specmod.BootSpec, disks: tuple = ()) -> None:
        """Create and start the instance with ``disks`` (storage.backend.Disk) attached.
        On failure nothing the driver made is left and the error carries the hypervisor's
        reason. Hypervisor calls are counted for the job ``agent.context`` names."""

    @abc.abstractmethod
    def check_uuid_free(self, uuid: str) -> None:
        """Raise UuidTaken if the hypervisor is known to hold a domain with this uuid that
        the agent did not make (from what the driver already knows: no hypervisor call)."""

    @abc.abstractmethod
    def destroy(self, uuid: str) -> None:
        """Stop and remove the instance and its files; succeed if it is already gone. A
        domain with this uuid that the agent did not make (its metadata does not name the
        uuid and this node) is never touched."""

    @abc.abstractmethod
    def shutdown(self, uuid: str) -> None:
        """Ask the guest to power itself off (the ACPI power button) and return at once; the
        domain stops later, seen by its lifecycle event. DomainStateConflict if it does not
        run; DomainNotFound if the hypervisor holds no domain of ours with this uuid."""

    @abc.abstractmethod
    def power_off(self, uuid: str) -> None:
        """Stop the domain at once (pulling the plug), keeping its definition, disks and
        files; succeed if it is not running. DomainNotFound as ``shutdown``."""

    @abc.abstractmethod
    def power_on(self, uuid: str) -> None:
        """Start the defined domain again; DomainStateConflict if it already runs,
        DomainNotFound as ``shutdown``."""

    @abc.abstractmethod
    def reboot(self, uuid: str, hard: bool) -> None:
        """hard: reset the running guest at once (done when this returns). Soft: ask the
        guest to reboot (the ACPI power button; libvirt restarts the guest once it powers
        off) and return at once; InstanceRebooted tells when it happened.
        DomainStateConflict if the domain does not run; DomainNotFound as ``shutdown``."""

    @abc.abstractmethod
    def list_instances(self, with_readiness: bool = False) -> list[InstanceInfo]:
        """Every instance the hypervisor holds, with its power state; ``ready`` is filled in
        for the instances of ours whose definition the listing reads anyway (those it sees
        for the first time), and with ``with_readiness`` for every running one of ours
        (after a reconnect: events of the gap are lost)."""

    @abc.abstractmethod
    def is_connected(self) -> bool:
        """False once the hypervisor connection is known to be lost (until reconnected)."""

    @abc.abstractmethod
    def power_state(self, uuid: str) -> str | None:
        """The instance's power state from the hypervisor, None if it holds no such instance.
        Not for the hot path: used to settle a boot whose answer was lost."""

    @abc.abstractmethod
    def ensure_reconnecting(self) -> None:
        """Unless connected or already at it, reconnect in the background, retrying until
        the hypervisor answers; then announce HypervisorReconnected. A lost connection
        (close event, or a call that found it dead) starts this by itself."""

    @abc.abstractmethod
    def console_output(self, uuid: str, max_bytes: int) -> dict:
        """The last ``max_bytes`` of the instance's serial console log (read on the work
        queue, no hypervisor call): ``{output, size, truncated}``; empty if none yet."""

    @abc.abstractmethod
    def stats(self) -> dict:
        """Counters: hypervisor calls by operation, host facts."""

    def domain_name(self, uuid: str) -> str:
        """The hypervisor's name for instance ``uuid`` (from what the driver knows: no call)."""
        return uuid

    # -- warm boots ---------------------------------------------------------------------------
    def spawn_spare(self, spec: specmod.BootSpec, disks: tuple, pool: str) -> None:
        """Start a spare of ``pool`` (``spec.uuid`` is its own identity), with a VM
        generation id and the identity port. Its events come as SpareEvent only; it is never
        an instance. Nothing is left if this fails."""
        raise NotImplementedError

    def save_spare(self, uuid: str, path: str) -> str:
        """Save the running spare's memory to ``path`` (its domain goes); return the domain
        XML stored in the image."""
        raise NotImplementedError

    def remove_spare(self, uuid: str) -> None:
        """Stop the spare's domain if it runs (only a spare of this node); no error if none."""
        raise NotImplementedError

    def restore_warm(self, spec: specmod.BootSpec, spare, disks: tuple) -> None:
        """Restore saved ``spare`` (agent.warm.spares.Spare) as instance ``spec`` with
        ``disks``: one hypervisor call. It runs under the spare's hypervisor identity; every
        method here takes the instance's uuid for it from now on."""
        raise NotImplementedError

    def pause_spare(self, uuid: str) -> str:
        """Pause the ready spare ``uuid`` in memory (a hot spare), its identity port open;
        return its domain XML."""
        raise NotImplementedError

    def keep_hot_spare(self, uuid: str) -> None:
        """A hot spare found at start-up is kept: its events are a spare's."""
        raise NotImplementedError

    def resume_warm(self, spec: specmod.BootSpec, spare, disks: tuple,
                    identity: dict | None = None) -> None:
        """Resume hot ``spare`` (agent.warm.spares.Spare) as instance ``spec`` with ``disks``:
        one hypervisor call. Like ``restore_warm`` it runs under the spare's hypervisor
        identity from now on. ``identity``: written to the guest's identity port just before
        that call (the guest reads it as it wakes; its answer comes as IdentityAcknowledged);
        None: nothing written (a cloud-init pool's guest)."""
        raise NotImplementedError

    def persist(self, uuid: str) -> None:
        """Make a restored instance's domain persistent (stop and start keep it)."""
        raise NotImplementedError

    def send_identity(self, uuid: str, identity: dict) -> None:
        """Write ``identity`` as one JSON line to the guest's identity port, with the host's
        clock; the guest's answer comes as IdentityAcknowledged (an earlier line's no longer
        does)."""
        raise NotImplementedError

    def set_guest_time(self, uuid: str) -> None:
        """Set the guest's clock to the host's, through its guest agent."""
        raise NotImplementedError

    def guest_exec(self, uuid: str, argv: list[str]) -> int:
        """Start ``argv`` in the guest through its guest agent; its pid."""
        raise NotImplementedError

    def guest_exec_status(self, uuid: str, pid: int) -> dict | None:
        """None while ``pid`` runs in the guest, then {exitcode, out, err}."""
        raise NotImplementedError
