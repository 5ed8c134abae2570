"""Which instance, job and trace track the running (green)thread works for.

One context variable that every layer reads, so no layer passes it on by hand: the tracer
puts work-queue calls on the instance's (or the named) track, and the libvirt Host counts a
job's hypervisor calls in that job's counter. Greenthreads and native threads each have their
own context; a spawned one starts with none. Pure: no I/O.
"""
import collections
import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class Work:
    """What the current code works for (every field may be unset)."""

    uuid: str | None = None                        # the instance
    calls: collections.Counter | None = None       # its job's hypervisor call counter
    track: str | None = None                       # a trace track when no instance is bound


_WORK: contextvars.ContextVar = contextvars.ContextVar('compute_agent_work', default=Work())


def current() -> Work:
    """The work bound to this (green)thread now."""
    return _WORK.get()


@contextlib.contextmanager
def working(uuid: str | None = None, calls: collections.Counter | None = None,
            track: str | None = None):
    """Within this block, this (green)thread works for ``uuid`` (counting hypervisor calls in
    ``calls``) or, with no instance, on trace track ``track``."""
    token = _WORK.set(Work(uuid=uuid, calls=calls, track=track))
    try:
        yield
    finally:
        _WORK.reset(token)
