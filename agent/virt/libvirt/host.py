"""The libvirt connection: the one place that talks to libvirt-python.

``Host`` owns the connection, the native event-loop thread, reconnection after libvirtd goes
away (it retries by itself and announces ``Reconnected``), the per-operation call counters and
the translation of libvirtError into the agent's exceptions. Every call runs on the global
work queue; host facts are read once and cached.

Threads: ``call`` is made from (green)threads; callbacks from libvirt arrive on the native
event-loop thread and are only handed on through ``event_sink`` (thread-safe), never handled
there.
"""
import collections
import dataclasses
import errno
import logging
import os
import time
from typing import Any, Callable

from agent import context
from agent import exception
from agent.virt.libvirt import config as vconfig

LOG = logging.getLogger(__name__)

# Error codes that mean the connection itself is gone, not that the call was wrong.
_CONNECTION_ERRORS = ('VIR_ERR_SYSTEM_ERROR', 'VIR_ERR_INTERNAL_ERROR', 'VIR_ERR_NO_CONNECT',
                      'VIR_ERR_INVALID_CONN', 'VIR_ERR_RPC')

# libvirt error codes the agent acts on, as its own exceptions.
_ERROR_CLASSES = (('VIR_ERR_NO_DOMAIN', exception.DomainNotFound),
                  ('VIR_ERR_OPERATION_INVALID', exception.DomainStateConflict))


@dataclasses.dataclass(frozen=True)
class LifecycleEvent:
    """A domain lifecycle event, as handed from the event thread to the agent."""

    uuid: str
    name: str
    event: int
    detail: int
    timestamp: float


@dataclasses.dataclass(frozen=True)
class RebootEvent:
    """The guest of a domain was reset (libvirt's reboot event)."""

    uuid: str
    name: str
    timestamp: float


@dataclasses.dataclass(frozen=True)
class AgentChannelEvent:
    """The guest opened (``connected``) or closed its agent channel (libvirt's agent-lifecycle
    event; ``reason``: libvirt's, 1 = the domain started, 2 = the guest's channel)."""

    uuid: str
    name: str
    connected: bool
    reason: int
    timestamp: float


@dataclasses.dataclass(frozen=True)
class ConnectionLost:
    """Connection ``epoch`` broke (its close callback fired, or a call found it dead)."""

    reason: int
    timestamp: float
    epoch: int


@dataclasses.dataclass(frozen=True)
class Reconnected:
    """A new connection is open, its events registered (after a ConnectionLost)."""

    timestamp: float
    epoch: int


@dataclasses.dataclass(frozen=True)
class HostFacts:
    """What libvirt says about the host, read once per connection set-up."""
    hostname: str
    arch: str
    domain_types: dict
    cpus: int
    memory_mb: int
    lib_version: int
    hv_version: int


def _int1(exc) -> int | None:
    """libvirt's int1 of an error (errno, for system errors), where the binding has it."""
    try:
        return exc.get_error_int1()
    except Exception:     # not every libvirtError (or fake) carries it
        return None


_event_loops: set = set()   # id() of libvirt modules whose default event loop runs


class Host:
    """One libvirt connection used by every caller of the agent.

    libvirt_mod: the libvirt module (the real one, or a fake in unit tests).
    event_sink(item): thread-safe; receives LifecycleEvent, RebootEvent, AgentChannelEvent,
    ConnectionLost and Reconnected.
    runtime: spawn, spawn_native and sleep (``agent.workqueue.Runtime``).
    """

    def __init__(self, uri: str, runtime, libvirt_mod, event_sink: Callable[[Any], None],
                 keepalive: tuple[int, int] = (5, 3), retry_interval: float = 1.0):
        self.uri = uri
        self._wq = runtime.workqueue
        self._runtime = runtime
        self._lv = libvirt_mod
        self._sink = event_sink
        self._keepalive = keepalive
        self._retry_interval = retry_interval
        self._reconnecting = False
        self._conn = None
        self._epoch = 0          # grows with every connection: a call can tell it lost its own
        self._facts: HostFacts | None = None
        # op -> count of work-queue items; one per libvirt call, except the start-up and
        # reconnect bundles 'open' (open + 5 registrations) and 'host_facts' (6 reads).
        self.calls = collections.Counter()
        self._codes = {getattr(libvirt_mod, name) for name in _CONNECTION_ERRORS
                       if hasattr(libvirt_mod, name)}
        self._classes = {getattr(libvirt_mod, name): cls for name, cls in _ERROR_CLASSES
                         if hasattr(libvirt_mod, name)}

    # -- connection -------------------------------------------------------------------------
    def start_event_loop(self) -> None:
        """Register libvirt's default event implementation and run it on a native thread."""
        # libvirt's default event implementation is process-wide: register and run it once.
        if id(self._lv) not in _event_loops:
            # libvirt-python prints every error to stderr by default; errors are translated
            # and logged here instead.
            self._lv.registerErrorHandler(lambda ctx, err: None, None)
            self._lv.virEventRegisterDefaultImpl()
            _event_loops.add(id(self._lv))
            self._runtime.spawn_native(self._run_event_loop, 'libvirt-events')

    def _run_event_loop(self) -> None:
        while True:
            self._lv.virEventRunDefaultImpl()

    def connect(self) -> None:
        """Open the connection and register lifecycle events and the close callback."""
        self.start_event_loop()
        epoch = self._epoch + 1
        conn = self.call('open', self._open, epoch)
        self._conn = conn
        self._epoch = epoch
        LOG.info('connected to %s', self.uri)

    def ensure_reconnecting(self) -> None:
        """Unless connected or already at it: reconnect in the background, retrying every
        ``retry_interval`` until libvirtd answers; then hand ``Reconnected`` to the sink."""
        if self._reconnecting or self._conn is not None:
            return
        self._reconnecting = True
        self._runtime.spawn(self._reconnect_loop)

    def _reconnect_loop(self) -> None:
        try:
            while True:
                try:
                    self.connect()
                    break
                except exception.AgentError as exc:
                    LOG.info('reconnect to %s failed (%s); retrying', self.uri, exc)
                    self._runtime.sleep(self._retry_interval)
        finally:
            self._reconnecting = False
        self._sink(Reconnected(timestamp=time.time(), epoch=self._epoch))

    def _open(self, epoch: int):
        # Runs on a work-queue thread: the whole connection set-up is one queue item.
        conn = self._lv.open(self.uri)
        if conn is None:
            raise self._lv.libvirtError('open returned no connection')
        conn.registerCloseCallback(self._on_close, epoch)
        conn.domainEventRegisterAny(None, self._lv.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    self._on_lifecycle, None)
        conn.domainEventRegisterAny(None, self._lv.VIR_DOMAIN_EVENT_ID_REBOOT,
                                    self._on_reboot, None)
        conn.domainEventRegisterAny(None, self._lv.VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE,
                                    self._on_agent, None)
        if self._keepalive[0] > 0:
            try:
                conn.setKeepAlive(*self._keepalive)
            except self._lv.libvirtError as exc:   # test:/// and embed URIs have no keepalive
                LOG.debug('keepalive not available: %s', exc)
        return conn

    @property
    def connected(self) -> bool:
        """Whether a connection is open (False from a loss until the reconnect)."""
        return self._conn is not None

    def mark_disconnected(self) -> None:
        """The connection is known to be lost."""
        self._conn = None

    def close(self) -> None:
        """Close the connection (errors on a dead one are ignored)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                self._wq.execute('libvirt.close', conn.close)
            except Exception:   # closing a dead connection may fail; nothing to do about it
                LOG.debug('close failed', exc_info=True)

    # -- callbacks: native event-loop thread; hand on, never act here -------------------------
    def _on_lifecycle(self, conn, dom, event, detail, opaque) -> None:
        self._sink(LifecycleEvent(uuid=dom.UUIDString(), name=dom.name(), event=event,
                                  detail=detail, timestamp=time.time()))

    def _on_reboot(self, conn, dom, opaque) -> None:
        self._sink(RebootEvent(uuid=dom.UUIDString(), name=dom.name(), timestamp=time.time()))

    def _on_agent(self, conn, dom, state, reason, opaque) -> None:
        connected = state == self._lv.VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
        self._sink(AgentChannelEvent(uuid=dom.UUIDString(), name=dom.name(), connected=connected,
                                     reason=reason, timestamp=time.time()))

    def _on_close(self, conn, reason, epoch) -> None:
        self._sink(ConnectionLost(reason=reason, timestamp=time.time(), epoch=epoch))

    # -- calls ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The number of the current connection (a new one after every reconnect)."""
        return self._epoch

    def call(self, op: str, fn: Callable, *args, epoch: int | None = None) -> Any:
        """Run one libvirt call on the work queue; count it; translate its errors.

        The call is counted for the node, and for the job the calling (green)thread works
        for (``agent.context``), so calls can be attributed per boot. ``epoch``: the
        connection the call's objects come from (default: the current one); an error after
        that connection was replaced means the connection was lost.
        """
        work = context.current()
        self._count(op, work)
        epoch = self._epoch if epoch is None else epoch
        try:
            return self._wq.execute('libvirt.' + op, fn, *args)
        except self._lv.libvirtError as exc:
            raise self._translate(op, exc, work.uuid, epoch) from None

    def call_steps(self, op: str, fn: Callable, *, epoch: int | None = None) -> Any:
        """Like ``call``, for steps of which one is the libvirt call ``op``: ONE work-queue
        call runs ``fn(reached)``, which calls ``reached()`` right before that libvirt call.
        The call is counted (here, not in the worker thread) only if it was reached: a step
        failing before it counts no call libvirtd never got."""
        work = context.current()
        epoch = self._epoch if epoch is None else epoch
        reached = []
        try:
            return self._wq.execute('libvirt.' + op, fn, lambda: reached.append(op))
        except self._lv.libvirtError as exc:
            raise self._translate(op, exc, work.uuid, epoch) from None
        finally:
            if reached:
                self._count(op, work)

    def _count(self, op: str, work) -> None:
        """One libvirt call counted for the node and for the job ``work`` runs for."""
        self.calls[op] += 1
        if work.calls is not None:
            work.calls[op] += 1

    def _translate(self, op: str, exc, instance: str | None,
                   epoch: int) -> exception.HypervisorError:
        """HypervisorUnavailable when the call's own connection is gone (whether or not a
        new one exists by now): the call may or may not have been carried out."""
        code = exc.get_error_code() if hasattr(exc, 'get_error_code') else None
        reason = exc.get_error_message() if hasattr(exc, 'get_error_message') else str(exc)
        reason = reason or str(exc)
        if code in self._codes and (epoch != self._epoch or self._conn is None
                                    or not self._alive()):
            if epoch == self._epoch and self._conn is not None:
                self._conn = None
                LOG.warning('libvirt connection lost during %s: %s', op, reason)
                # As if its close callback had fired (it may never): the driver hears of it
                # and a reconnect starts.
                self._sink(ConnectionLost(reason=-1, timestamp=time.time(), epoch=epoch))
            return exception.HypervisorUnavailable(reason=reason)
        if code == getattr(self._lv, 'VIR_ERR_SYSTEM_ERROR', None) and (
                _int1(exc) == errno.EAGAIN or reason.endswith(os.strerror(errno.EAGAIN))):
            LOG.info('[instance: %s] libvirt %s: busy (%s)', instance, op, reason)
            return exception.HypervisorBusy(op=op, reason=reason)
        # Callers decide whether an error matters (e.g. "not running" on destroy does not):
        # they tell them apart by the class, never by libvirt's error names.
        LOG.debug('[instance: %s] libvirt %s failed: %s', instance, op, reason)
        return self._classes.get(code, exception.HypervisorError)(op=op, reason=reason)

    def _alive(self) -> bool:
        try:
            return bool(self._conn.isAlive())
        except Exception:
            return False

    def conn(self):
        """The open connection; HypervisorUnavailable if there is none."""
        if self._conn is None:
            raise exception.HypervisorUnavailable(reason='not connected to %s' % self.uri)
        return self._conn

    # -- facts ------------------------------------------------------------------------------
    def facts(self) -> HostFacts:
        """Host facts, read from libvirt once and then served from memory."""
        if self._facts is None:
            self._facts = self.call('host_facts', self._read_facts)
        return self._facts

    def _read_facts(self) -> HostFacts:
        conn = self.conn()
        caps = vconfig.parse_capabilities(conn.getCapabilities())
        info = conn.getInfo()
        try:
            mem = conn.getMemoryStats(self._lv.VIR_NODE_MEMORY_STATS_ALL_CELLS, 0)
            memory_mb = int(mem['total']) // 1024
        except (self._lv.libvirtError, KeyError):
            memory_mb = int(info[1])   # getInfo: MiB of NUMA node 0 only on some hosts
        return HostFacts(hostname=conn.getHostname(), arch=caps['arch'],
                         domain_types=caps['domain_types'], cpus=int(info[2]),
                         memory_mb=memory_mb, lib_version=conn.getLibVersion(),
                         hv_version=conn.getVersion())
