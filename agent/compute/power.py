"""The power jobs an operator asks for: stop, start, and soft or hard reboot.

Each is a durable job like a boot or a delete, and runs under the instance's lock (one job per
instance at a time). Each costs one libvirt RPC when the guest does what it is asked:

- stop: the ACPI power button (``shutdownFlags``), pressed again every
  ``acpi_retry_interval`` (a guest still booting misses it), until the guest powered off
  (its STOPPED event) or the timeout passed; then ``destroy`` (result ``forced``). A timeout
  of 0 destroys at once. A delete accepted meanwhile supersedes the stop: it ends at once.
- start: ``createWithFlags``; a domain already running counts as started.
- soft reboot: the ACPI power button with libvirt's restart (``reboot``), until the guest's
  reset event or ``reboot_timeout``; then a reset (result ``hard (soft timed out)``).
- hard reboot: ``reset`` of a running domain, ``createWithFlags`` of one that is not.

The instance's state comes from the hypervisor's events as ever: a job waits for them (woken
by ``Core.change``/``Core.notify``, no polling) and only sets the state itself after a call
whose success means it (a ``destroy`` that returned: the domain is off).
"""
import dataclasses
import logging
import time
from typing import Callable

from agent import context
from agent import exception
from agent import jobs as jobsmod
from agent.compute import core as coremod
from agent.compute import events as eventsmod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)

OFF = (vdriver.SHUTDOWN, vdriver.CRASHED)


def _deleting(inst: instancemod.Instance) -> bool:
    return inst.delete_job is not None


def _superseded(inst: instancemod.Instance) -> exception.AgentError:
    return exception.AgentError('superseded: the instance is being deleted (job %s)'
                                % inst.delete_job)


@dataclasses.dataclass(frozen=True)
class PowerOptions:
    """The ``[power]`` options (seconds)."""

    stop_timeout: float = 60.0
    max_stop_timeout: float = 600.0
    acpi_retry_interval: float = 10.0
    reboot_timeout: float = 60.0


class Power:
    """Runs stop, start and reboot jobs (kinds ``stop``, ``start``, ``reboot``; a reboot
    job's spec says ``hard``, a stop job's its ``timeout``)."""

    def __init__(self, core: coremod.Core, events: eventsmod.Events,
                 introduce: Callable[..., None], options: PowerOptions):
        """``introduce(inst, send=True)``: tell a started guest who it is (the warm part's;
        ``send=False`` before the start: not ready before it answered)."""
        self._core = core
        self._events = events
        self._introduce = introduce
        self.options = options
        self._run = {'stop': self._stop, 'start': self._start, 'reboot': self._reboot}

    def run(self, job: jobsmod.Job, inst: instancemod.Instance) -> None:
        """Run ``job`` on ``inst`` once the job before it has ended (the instance's lock);
        it ends at once, failed, if a delete was accepted for the instance meanwhile."""
        core = self._core
        with inst.lock:
            if core.instances.get(inst.uuid) is not inst or inst.delete_job is not None:
                core.jobs.start(job)
                self._end(job, inst, str(_superseded(inst)))
                return
            start = core.tracer.now()
            with context.working(uuid=inst.uuid, calls=job.calls):
                core.jobs.start(job)
                try:
                    result, reason = self._run[job.kind](job, inst), None
                except exception.AgentError as exc:
                    result, reason = None, str(exc)
                except Exception as exc:     # a bug, not a user error: still end the job
                    LOG.error('[instance: %s] %s job %s failed unexpectedly', inst.uuid,
                              job.kind, job.id, exc_info=exc)
                    result, reason = None, 'internal error: %s' % exc
                self._end(job, inst, reason, result)
            core.tracer.complete('%s job' % job.kind, 'job', start, core.tracer.now(),
                                 uuid=inst.uuid, job_id=job.id, state=job.state)

    def _end(self, job: jobsmod.Job, inst: instancemod.Instance, reason: str | None,
             result: str | None = None) -> None:
        core = self._core
        core.jobs.finish(job, reason, result)
        if reason:
            LOG.error('[instance: %s] %s job %s failed: %s', inst.uuid, job.kind, job.id, reason)
        else:
            LOG.info('[instance: %s] %s job %s done (%s; %d libvirt calls)', inst.uuid,
                     job.kind, job.id, result, sum(job.calls.values()))
        if inst.power_job == job.id:
            core.change(inst, power_job=None,
                        task=None if inst.task in states.TASKS.values() else inst.task)

    def _press_until(self, inst: instancemod.Instance, press, done, timeout: float) -> None:
        """Press the ACPI power button (``press()``) and wait for ``done()``, or a delete
        of the instance, pressing again every ``acpi_retry_interval`` (a guest still booting
        misses a press) until ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            press()
            step = min(self.options.acpi_retry_interval, deadline - time.monotonic())
            if self._core.wait_until(inst, lambda: done() or _deleting(inst), max(step, 0.0)) \
                    or time.monotonic() >= deadline:
                return
            LOG.info('[instance: %s] the guest has not reacted yet; pressing the power '
                     'button again', inst.uuid)

    # -- stop -------------------------------------------------------------------------------
    def _stop(self, job: jobsmod.Job, inst: instancemod.Instance) -> str:
        core = self._core
        timeout = float((job.spec or {}).get('timeout', self.options.stop_timeout))
        if timeout > 0:
            try:
                self._press_until(inst, lambda: core.driver.shutdown(inst.uuid),
                                  lambda: inst.power_state in OFF, timeout)
            except exception.DomainStateConflict:       # not running: off already
                self._events.apply_power(inst, vdriver.SHUTDOWN, 'found off', time.time())
                return 'already off'
            if inst.power_state in OFF:
                return 'graceful'
            if _deleting(inst):
                raise _superseded(inst)
            LOG.warning('[instance: %s] the guest did not power off within %d s: stopping '
                        'it at once', inst.uuid, timeout)
        core.driver.power_off(inst.uuid)
        # destroy returned: the domain is off (its STOPPED event confirms it later).
        self._events.apply_power(inst, vdriver.SHUTDOWN, 'stopped by the agent', time.time())
        return 'forced' if timeout > 0 else 'at once'

    # -- start ------------------------------------------------------------------------------
    def _start(self, job: jobsmod.Job, inst: instancemod.Instance) -> str:
        try:
            self._power_on(inst)
        except exception.DomainStateConflict:       # its events tell the state
            return 'already running'
        self._started(inst)
        return 'started'

    def _power_on(self, inst: instancemod.Instance) -> None:
        was = inst.identity_pending
        self._introduce(inst, send=False)
        try:
            self._core.driver.power_on(inst.uuid)
        except BaseException:
            inst.identity_pending = was     # nothing started (or already running): as it was
            raise

    def _started(self, inst: instancemod.Instance) -> None:
        """The agent started the domain: running (its events confirm it), and a pool
        instance's new guest learns its identity."""
        self._events.apply_power(inst, vdriver.RUNNING, 'started by the agent', time.time())
        self._introduce(inst)

    # -- reboot -----------------------------------------------------------------------------
    def _reboot(self, job: jobsmod.Job, inst: instancemod.Instance) -> str:
        core = self._core
        if job.attempts > 1:
            return self._settle_reboot(inst)
        if (job.spec or {}).get('hard'):
            return self._hard(inst)
        before = inst.reboots
        self._press_until(inst, lambda: core.driver.reboot(inst.uuid, hard=False),
                          lambda: inst.reboots > before or inst.power_state in OFF,
                          self.options.reboot_timeout)
        if inst.reboots > before:
            return 'soft'
        if _deleting(inst):
            raise _superseded(inst)
        LOG.warning('[instance: %s] the guest did not reboot within %d s: resetting it',
                    inst.uuid, self.options.reboot_timeout)
        return self._hard(inst) + ' (soft timed out)'

    def _settle_reboot(self, inst: instancemod.Instance) -> str:
        """A reboot interrupted by an agent restart: whether the guest reset is unknown, and
        rebooting it again could interrupt its work a second time. Settled by the domain's
        state (from the start-up listing): running is done, anything else is started."""
        if inst.power_state == vdriver.RUNNING:
            return 'settled after an agent restart: the domain runs'
        self._power_on(inst)
        self._started(inst)
        return 'settled after an agent restart: started'

    def _hard(self, inst: instancemod.Instance) -> str:
        try:
            self._core.driver.reboot(inst.uuid, hard=True)
            return 'hard'
        except exception.DomainStateConflict:       # not running: start it
            self._power_on(inst)
            self._started(inst)
            return 'hard (started)'
