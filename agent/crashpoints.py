"""Named crash points: test-only places where a process can be made to die, so that a test
reaches every step between two durable changes deterministically (after PostgreSQL's
injection points).

``reached(name, *uuids)`` marks a point in the code. Off (the default, and the only state in
production) it costs one comparison. Armed, by the environment of the process:

    COMPUTE_AGENT_CRASH_AT=<point>        the point to die at
    COMPUTE_AGENT_CRASH_FOR=<uuid>        only when the point is reached for this uuid
                                          (an instance's, a spare's or a job row's)
    COMPUTE_AGENT_CRASH_REPORT=<file>     where the point's name is written (fsynced) first,
                                          so a test knows its point was reached

the process sends itself SIGKILL there: nothing flushed, nothing cleaned up, as a power cut
or kill -9 would leave it. Once only: a point already written to the report file does not
fire again (a conductor worker its parent restarts with the same environment lives).
``arm_from_env`` refuses an unknown point (a typo would make a test pass that never
crashed), and the agent and conductor refuse to start with a point
armed unless ``[DEFAULT] debug`` is set: production configuration never arms one.

``POINTS`` is the registry: every point in the code is listed here (a unit test checks the
code against it) and the functional matrix has a case for each (tests/functional/
test_crash_points.py fails for a point without one).
"""
import os
import signal

ENV_POINT = 'COMPUTE_AGENT_CRASH_AT'
ENV_FOR = 'COMPUTE_AGENT_CRASH_FOR'
ENV_REPORT = 'COMPUTE_AGENT_CRASH_REPORT'

# name -> the state the process leaves behind when it dies there.
POINTS = {
    # instance directories (agent.instancedir)
    'dir.create.made': 'a marked directory under its temporary name, not yet renamed',
    'dir.remove.renamed': 'a marked directory renamed for removal, its files not yet removed',
    # disks (agent.storage)
    'disk.file.created': 'a qcow2 disk made, its boot not yet past the disk step',
    'disk.file.adopted': "a spare's disk file moved to the instance, not yet restored",
    'disk.file.deleted': "a deleted instance's disk file gone, its directory still there",
    'disk.lvm.created': 'an LV created and tagged, the image not yet written into it',
    'disk.lvm.adopted': "a spare's LV re-tagged for the instance, not yet restored",
    'disk.lvm.deleted': "a deleted instance's LV removed, its job not yet finished",
    # the job journal (agent.journal)
    'journal.commit.before': 'a group commit written, not yet committed (no fsync)',
    'journal.commit.after': 'a group commit on disk, its waiters not yet answered',
    # the persisted sequence (agent.sequence)
    'sequence.reserve.before': 'a new block of seq numbers about to be written at start-up',
    'sequence.reserve.after': 'a new block of seq numbers on disk, none handed out',
    # boot, delete, power (agent.virt.libvirt.driver)
    'boot.defined': 'the domain defined, not started',
    'boot.started': 'the domain started, the boot job not yet done',
    'delete.destroyed': 'the domain destroyed, still defined',
    'delete.undefined': 'the domain undefined, its disk and directory still there',
    'stop.sent': 'the stop sent to libvirt, the stop job not yet done',
    'start.sent': 'the start sent to libvirt, the start job not yet done',
    'reboot.sent': 'the reboot sent to libvirt, the reboot job not yet done',
    # warm boots: spares made, saved, taken, discarded (agent.warm)
    'spare.make.begun': "a spare's directory and 'making' record written, no domain yet",
    'spare.make.started': "a spare's domain running, not saved",
    'spare.save.saved': "a spare's memory image written (its domain gone), record not 'saved'",
    'spare.save.recorded': "a spare recorded 'saved', not yet available to boots",
    'spare.hot.paused': "a hot spare's domain paused in memory, record not 'hot'",
    'spare.take.marked': "a spare taken by a boot (a saved one recorded 'taken'), its disk "
                         "not yet handed over",
    'spare.take.restored': 'a spare restored as the instance, the spare not yet discarded',
    'spare.take.resumed': "a hot spare resumed as the instance, its metadata still the spare's",
    'spare.discard.removing': "a used spare's directory about to be removed",
    'warm.persist.before': 'a restored instance running transient, not yet made persistent',
    # the conductor's store (agent.conductor.db)
    'conductor.store.before_commit': "a report's rows written in the conductor's transaction, "
                                     'not committed',
    'conductor.store.after_commit': "a report committed by the conductor, not yet answered",
}

_armed: str | None = None
_only_for: str | None = None
_report: str | None = None


class UnknownPoint(ValueError):
    """An armed point that the registry does not list."""


class NotAllowed(ValueError):
    """A point armed in a process whose configuration is not a test's."""


def arm(point: str | None, only_for: str | None = None, report: str | None = None) -> None:
    """Arm ``point`` (None disarms)."""
    global _armed, _only_for, _report
    if point is not None and point not in POINTS:
        raise UnknownPoint('unknown crash point %r (known: %s)' % (point, ', '.join(POINTS)))
    _armed, _only_for, _report = point, only_for or None, report or None


def arm_from_env(debug: bool, environ=os.environ) -> str | None:
    """Arm the point the environment names, if any; returns it. Refused (UnknownPoint, or
    NotAllowed without ``debug``): a process must not start with a point it cannot arm."""
    point = environ.get(ENV_POINT) or None
    if point is not None and not debug:
        raise NotAllowed('%s=%s: crash points are for tests; they are armed only with '
                         '[DEFAULT] debug = true' % (ENV_POINT, point))
    arm(point, environ.get(ENV_FOR), environ.get(ENV_REPORT))
    return _armed


def arm_for_service(debug: bool, log) -> bool:
    """At a service's start: arm what the environment names, saying so loudly; False (the
    service must not start) if that is refused."""
    try:
        point = arm_from_env(debug)
    except ValueError as exc:
        log.error('cannot start: %s', exc)
        return False
    if point:
        log.warning('crash point %s armed%s: this process kills itself there (tests only)',
                    point, ' for %s' % _only_for if _only_for else '')
    return True


def armed() -> str | None:
    return _armed


def _fired(report: str, name: str) -> bool:
    try:
        with open(report) as f:
            return any(line.split(' ', 1)[0] == name for line in f)
    except FileNotFoundError:
        return False


def reached(name: str, *uuids: str) -> None:
    """The code is at point ``name`` (for ``uuids``): die here if it is the armed one."""
    if _armed is None or name != _armed:
        return
    if _only_for is not None and _only_for not in uuids:
        return
    if _report is not None:
        if _fired(_report, name):
            return           # once: a process restarted with the same environment lives on
        fd = os.open(_report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, ('%s %d\n' % (name, os.getpid())).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
