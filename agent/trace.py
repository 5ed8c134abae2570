"""Chrome trace-event recording (opens in Perfetto and chrome://tracing).

One track per instance (``instance <uuid>``): its boot_instance request (lock wait, claim,
journal wait), its job (each work-queue wait and each libvirt call or storage command the job
made), the lifecycle event that made it active and every report to the conductor that carried
its state. Work that belongs to no instance goes to a track of its own: ``journal`` (group
commits), ``libvirt`` / ``storage`` / ``other`` (calls of RPC requests), ``conductor reports``,
``start-up``, ``audit``, ``reconnect``.

Which track a work-queue call belongs to is what the calling (green)thread works for
(``agent.context``: the instance, else a named track): a context variable, so every
greenthread (and native thread) has its own.
Events are kept in memory (at most ``max_events``; later ones are counted as dropped) and
written by ``write()`` as one JSON object, atomically. Plain code: no eventlet here.
"""
import contextlib
import itertools
import json
import os
import time
from typing import Callable

from agent import context
from agent import exception


_KINDS = {'libvirt': 'libvirt', 'cmd': 'storage', 'journal': 'journal'}


def op_kind(op: str) -> str:
    """The kind of a work-queue operation (its prefix): libvirt, storage, journal or other.
    A call's trace category, its track when no instance is bound, and its metrics label."""
    return _KINDS.get(op.split('.', 1)[0], 'other')


def instance_track(uuid: str) -> str:
    return 'instance %s' % uuid


class Request:
    """The spans of one request: its phases (``phase``) and the request itself, kept until
    ``finish`` records them all, so a refused request leaves no spans behind. ``seconds``
    (the request's duration at ``finish``) serves the metrics, tracing on or off."""

    def __init__(self, tracer: 'NullTracer', name: str, cat: str):
        self._tracer = tracer
        self._name, self._cat = name, cat
        self._start = tracer.now()
        self._phases: list[tuple[str, float, float]] = []
        self.seconds = 0.0

    @contextlib.contextmanager
    def phase(self, name: str):
        """Time the block as phase ``name`` of the request (kept only if it completes)."""
        start = self._tracer.now()
        yield
        self._phases.append((name, start, self._tracer.now()))

    def finish(self, uuid: str | None = None, **args) -> float:
        """Record the phases and the request (on ``uuid``'s track); return its seconds."""
        end = self._tracer.now()
        for name, start, stop in self._phases:
            self._tracer.complete(name, 'request', start, stop, uuid=uuid)
        self._tracer.complete(self._name, self._cat, self._start, end, uuid=uuid, **args)
        self.seconds = end - self._start
        return self.seconds


class NullTracer:
    """Tracing off: every method is a no-op (``request`` still times requests for the
    metrics)."""

    enabled = False
    path = None
    now = staticmethod(time.monotonic)

    def bind_track(self, track: str):
        """Within this block, this (green)thread's work goes on ``track`` (``context``)."""
        return context.working(track=track)

    def request(self, name: str, cat: str = 'rpc') -> Request:
        """Begin timing a request and its phases (``Request``)."""
        return Request(self, name, cat)

    def complete(self, name: str, cat: str, start: float, end: float,
                 uuid: str | None = None, track: str | None = None, **args) -> None:
        """Record a finished slice (no-op)."""
        pass

    def instant(self, name: str, cat: str, uuid: str | None = None, track: str | None = None,
                **args) -> None:
        """Record an instant event (no-op)."""
        pass

    def on_call(self, op: str, enqueued: float, started: float, ended: float,
                failed: bool) -> None:
        """A work-queue call ended (no-op)."""
        pass

    def stats(self) -> dict:
        """Counters (tracing is off)."""
        return {'enabled': False}

    def write(self, path: str | None = None) -> dict:
        """Tracing is off: nothing to write."""
        return {'enabled': False}


class Tracer(NullTracer):
    """Records trace events; timestamps come from ``clock`` (seconds, monotonic)."""

    enabled = True

    def __init__(self, path: str, process_name: str = 'compute-agent', max_events: int = 1_000_000,
                 clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._clock = clock
        self._origin = clock()
        self._wall_origin = time.time()
        self._pid = os.getpid()
        self._process_name = process_name
        self._max = max_events
        self._events: list[dict] = []
        self._tids: dict[str, int] = {}
        self._next_tid = itertools.count(1)     # next(): atomic, unlike len(dict) + 1
        self._writes = itertools.count(1)      # a private temporary file per write
        self.dropped = 0

    def now(self) -> float:
        """The trace clock: seconds, monotonic."""
        return self._clock()

    # -- tracks -----------------------------------------------------------------------------
    def _tid(self, track: str) -> int:
        tid = self._tids.get(track)
        if tid is None:
            tid = self._tids.setdefault(track, next(self._next_tid))
        return tid

    def _track(self, uuid: str | None, track: str | None) -> str:
        if uuid is not None:
            return instance_track(uuid)
        return track or _bound_track() or 'agent'

    def _us(self, t: float) -> float:
        return round((t - self._origin) * 1e6, 3)

    def _add(self, event: dict) -> None:
        if len(self._events) >= self._max:
            self.dropped += 1
            return
        self._events.append(event)    # list.append: atomic, from any (green)thread

    # -- events -----------------------------------------------------------------------------
    def complete(self, name: str, cat: str, start: float, end: float,
                 uuid: str | None = None, track: str | None = None, **args) -> None:
        """A span ("X" event) from ``start`` to ``end`` (clock seconds)."""
        ts = self._us(start)
        event = {'name': name, 'cat': cat, 'ph': 'X', 'ts': ts,
                 'dur': max(0.0, round(self._us(end) - ts, 3)), 'pid': self._pid,
                 'tid': self._tid(self._track(uuid, track))}
        if args:
            event['args'] = args
        self._add(event)

    def instant(self, name: str, cat: str, uuid: str | None = None, track: str | None = None,
                **args) -> None:
        """Record an instant event on the current (or named) track."""
        event = {'name': name, 'cat': cat, 'ph': 'i', 's': 't', 'ts': self._us(self._clock()),
                 'pid': self._pid, 'tid': self._tid(self._track(uuid, track))}
        if args:
            event['args'] = args
        self._add(event)

    def on_call(self, op: str, enqueued: float, started: float, ended: float,
                failed: bool) -> None:
        """Work-queue observer: the queue wait and the call, on the caller's track."""
        kind = op_kind(op)
        track = _bound_track() or kind
        self.complete('wait ' + op, 'queue', enqueued, started, track=track)
        args = {'failed': True} if failed else {}
        self.complete(op, kind, started, ended, track=track, **args)

    # -- output -----------------------------------------------------------------------------
    def events(self) -> list[dict]:
        """Metadata (process and track names, tracks ordered as first seen) plus the events."""
        meta = [{'name': 'process_name', 'ph': 'M', 'pid': self._pid, 'tid': 0,
                 'args': {'name': self._process_name}}]
        for track, tid in sorted(self._tids.items(), key=lambda kv: kv[1]):
            meta.append({'name': 'thread_name', 'ph': 'M', 'pid': self._pid, 'tid': tid,
                         'args': {'name': track}})
            meta.append({'name': 'thread_sort_index', 'ph': 'M', 'pid': self._pid, 'tid': tid,
                         'args': {'sort_index': tid}})
        return meta + list(self._events)

    def stats(self) -> dict:
        """Counters: events kept and dropped, tracks."""
        return {'enabled': True, 'path': self.path, 'events': len(self._events),
                'tracks': len(self._tids), 'dropped': self.dropped}

    def write(self, path: str | None = None) -> dict:
        """Write everything recorded so far (tmp file + rename); returns ``stats()``.
        TraceWriteFailed if it cannot: the previous file stays, no partial file is left.

        Safe from any thread, native or green, and from several at once: it takes no lock
        (a green lock taken on a native work-queue thread can hang), each write has its own
        temporary file, and the rename is atomic."""
        path = path or self.path
        doc = {'traceEvents': self.events(), 'displayTimeUnit': 'ms',
               'otherData': {'clock_origin_unix_s': self._wall_origin,
                             'dropped_events': self.dropped}}
        tmp = '%s.tmp.%d.%d' % (path, os.getpid(), next(self._writes))
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(tmp, 'w') as f:
                json.dump(doc, f, separators=(',', ':'))
            os.replace(tmp, path)
        except (OSError, TypeError, ValueError) as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise exception.TraceWriteFailed(path=path, reason=exc) from None
        return dict(self.stats(), path=path)


def _bound_track() -> str | None:
    """The track the current (green)thread's work belongs to (``agent.context``)."""
    work = context.current()
    return instance_track(work.uuid) if work.uuid is not None else work.track
