"""The agent's own exceptions.

Every error a caller can see is one of these. They travel over RPC: a client that lists
``agent.exception`` in ``allowed_remote_exmods`` gets the same class back, with the same message.
libvirt and OS errors are translated into them at the wrapper that made the call.
"""


class AgentError(Exception):
    """Base class. ``msg_fmt`` is formatted with the keyword arguments."""

    msg_fmt = 'An unknown error occurred'

    def __init__(self, message: str | None = None, **kwargs):
        if message is None:
            try:
                message = self.msg_fmt % kwargs
            except (KeyError, TypeError):
                message = self.msg_fmt
        self.kwargs = {}   # oslo.messaging re-creates the exception from args alone
        super().__init__(message)

    def __str__(self):
        return self.args[0] if self.args else self.msg_fmt


class InvalidSpec(AgentError):
    """A request argument or boot-spec field is invalid; the message names it."""
    msg_fmt = 'Invalid request: %(reason)s'


class InstanceNotFound(AgentError):
    """The node holds no instance with this uuid."""
    msg_fmt = 'Instance %(uuid)s not found'


class InstanceBusy(AgentError):
    """A job works on the instance; the request may be repeated when it ends."""
    msg_fmt = 'Instance %(uuid)s is %(state)s; try again when that finishes'


class InstanceInvalidState(AgentError):
    """A change of state the instance state machine does not allow (``agent.compute.states``)."""

    msg_fmt = 'Instance %(uuid)s is %(state)s: it cannot %(action)s'


class DirectoryNotOurs(AgentError):
    """An instance directory exists that the agent did not mark as its own."""

    msg_fmt = '%(path)s exists and is not marked as this agent\'s; nothing was changed'


class JobNotFound(AgentError):
    """No such job (never made here, or pruned after ``[jobs] retention``)."""
    msg_fmt = 'Job %(job_id)s not found'


class HypervisorError(AgentError):
    """A libvirt call failed; the message carries libvirt's own reason."""

    msg_fmt = 'libvirt %(op)s failed: %(reason)s'


class HypervisorBusy(HypervisorError):
    """libvirt could not do it now and said so (EAGAIN, e.g. libvirtd's cgroup BPF program
    load interrupted by a signal during a storm of starts): the same call may succeed."""


class DomainNotFound(HypervisorError):
    """libvirt holds no such domain (VIR_ERR_NO_DOMAIN)."""


class DomainStateConflict(HypervisorError):
    """The domain is not in a state the call can act on, e.g. "already running" or "not
    running" (VIR_ERR_OPERATION_INVALID)."""


class HypervisorUnavailable(HypervisorError):
    """The hypervisor connection is gone; a call made on it may or may not have been carried
    out."""
    msg_fmt = 'libvirt is unreachable: %(reason)s'


class VersionCapped(AgentError):
    """A call the client's version cap does not allow yet (a rolling upgrade is under way)."""
    msg_fmt = ('%(what)s needs RPC version %(needed)s; this client is capped at %(cap)s '
               '([upgrade_levels] %(option)s): raise the cap once every server runs '
               '%(needed)s or later')


class ConfigError(AgentError):
    """The configuration cannot work on this node; the agent does not start."""
    msg_fmt = 'Configuration error: %(reason)s'


class StorageError(AgentError):
    """A storage command failed; the message carries the command's own reason."""

    msg_fmt = 'storage: %(reason)s'


class InsufficientResources(InvalidSpec):
    """A claim does not fit the node; the message names the resource."""

    msg_fmt = '%(resource)s: %(reason)s'


class ClaimExists(InvalidSpec):
    """The uuid already holds a resource claim."""
    msg_fmt = 'Instance %(uuid)s already holds a resource claim'


class TraceWriteFailed(AgentError):
    """The trace could not be written to ``[trace] path``."""
    msg_fmt = 'Could not write the trace to %(path)s: %(reason)s'


class JournalUnavailable(AgentError):
    """The job could not be recorded in the journal: nothing was accepted."""
    msg_fmt = 'The request was not recorded, so not accepted: %(reason)s'


class InvalidImage(InvalidSpec):
    """An image, kernel or initrd that the agent will not hand to QEMU."""

    msg_fmt = '%(field)s: %(reason)s'


class UuidInUse(InvalidSpec):
    """The uuid is the libvirt identity of something this agent made that is not that
    instance (a spare, or the domain a warm instance runs as)."""

    msg_fmt = 'uuid: %(uuid)s is in use by %(what)s; nothing was changed'


class UuidTaken(InvalidSpec):
    """The hypervisor holds a domain with this uuid that this agent did not make."""

    msg_fmt = ('uuid: %(uuid)s is taken by a domain this agent does not own (%(name)s); '
               'nothing was changed')


class AcceptanceUnknown(AgentError):
    """The job journal did not confirm the write in time: it may still land (and then the
    job runs). Repeat the same request to learn which."""

    msg_fmt = ('The request may or may not have been recorded (%(reason)s): job %(job_id)s for '
               '%(uuid)s; repeat the request with the same uuid to learn its outcome')


class InvalidReport(AgentError):
    """The conductor refused a report; nothing of it was applied."""

    msg_fmt = 'Report refused: %(reason)s'


class TooManyWaits(AgentError):
    """The conductor already serves its maximum of waits (``[conductor] max_waits``)."""
    msg_fmt = '%(count)d waits already in progress (max_waits); try again later'
