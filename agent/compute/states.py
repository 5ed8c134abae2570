"""Instance states and the transitions between them: the one place they are named.

    building --> active | paused | stopped      (lifecycle events of its first start)
    building --> error                          (the boot failed)
    active <--> paused <--> stopped <--> active (lifecycle events, guest power-off included)
    active | paused | stopped --> error         (crashed, or gone behind the agent's back)
    error --> active                            (the domain runs again)
    any but deleted --> deleting --> deleted
    deleting --> error                          (the delete failed; a later delete may retry)

Readiness (``WAITING``, ``READY``, ``LATE``; None while the domain does not run) is a second
field of a running instance, from the guest-agent channel's events.

Operators' operations (stop, start, reboot, hard reboot) are asked in the states ``OPERATIONS``
names; their jobs then move the instance along the transitions above (a stop's domain stops:
active -> stopped, by its event). A change to the same state is always allowed. ``check``
raises InstanceInvalidState for anything else, naming both states. Pure: no I/O.
"""
from agent import exception
from agent.virt import driver as vdriver

BUILDING = 'building'
ACTIVE = 'active'
PAUSED = 'paused'
STOPPED = 'stopped'
DELETING = 'deleting'
DELETED = 'deleted'
ERROR = 'error'

ALL = (BUILDING, ACTIVE, PAUSED, STOPPED, DELETING, DELETED, ERROR)

TRANSITIONS: dict[str, frozenset[str]] = {
    BUILDING: frozenset({ACTIVE, PAUSED, STOPPED, ERROR, DELETING}),
    ACTIVE: frozenset({PAUSED, STOPPED, ERROR, DELETING}),
    PAUSED: frozenset({ACTIVE, STOPPED, ERROR, DELETING}),
    STOPPED: frozenset({ACTIVE, PAUSED, ERROR, DELETING}),
    ERROR: frozenset({ACTIVE, DELETING}),
    DELETING: frozenset({DELETED, ERROR}),
    DELETED: frozenset(),
}

# The vm_state a hypervisor power state means for an instance no delete is working on.
POWER_TO_VM = {vdriver.RUNNING: ACTIVE, vdriver.PAUSED: PAUSED, vdriver.SHUTDOWN: STOPPED,
               vdriver.CRASHED: ERROR}


def allowed(current: str, new: str) -> bool:
    """Whether an instance in ``current`` may move to ``new``."""
    return new == current or new in TRANSITIONS.get(current, ())


def check(uuid: str, current: str, new: str) -> None:
    """Raise InstanceInvalidState unless ``current`` -> ``new`` is a transition of the table."""
    if not allowed(current, new):
        raise exception.InstanceInvalidState(uuid=uuid, state=current, action='become ' + new)


# The operations an operator asks for, and the states they may be asked in (checked when
# the request arrives: a refused request changes and records nothing).
STOP = 'stop'
START = 'start'
REBOOT = 'reboot'
HARD_REBOOT = 'hard_reboot'

OPERATIONS: dict[str, frozenset[str]] = {
    STOP: frozenset({ACTIVE, PAUSED}),                    # -> stopped
    START: frozenset({STOPPED}),                          # -> active
    REBOOT: frozenset({ACTIVE}),                          # stays active
    HARD_REBOOT: frozenset({ACTIVE, PAUSED, STOPPED, ERROR}),   # -> active (repairs)
}

# The task an instance shows while the job of an operation works on it.
TASKS = {STOP: 'stopping', START: 'starting', REBOOT: 'rebooting', HARD_REBOOT: 'rebooting'}


def check_operation(uuid: str, current: str, operation: str) -> None:
    """Raise InstanceInvalidState unless ``operation`` may be asked of an instance in
    ``current``; the message names the state and the operation."""
    if current not in OPERATIONS[operation]:
        raise exception.InstanceInvalidState(
            uuid=uuid, state=current,
            action='%s (only from %s)' % (operation.replace('_', ' '),
                                          ', '.join(sorted(OPERATIONS[operation]))))


# Readiness of a running guest (an instance field beside vm_state, not a vm_state: a guest
# may stop being ready and become ready again while it stays active, e.g. across a reboot).
# None while the domain does not run.
WAITING = 'waiting'     # running; its guest has not opened its agent channel (yet)
READY = 'ready'         # its guest holds the agent channel open (libvirt's event)
LATE = 'late'           # waiting for longer than [readiness] expect_within: not an error
READINESS = (WAITING, READY, LATE)
