"""A pool instance's identity port: a virtio-serial port whose host side is a unix socket.

The agent writes the instance's identity there (one JSON line, with a sequence number and
the host's clock) each time its guest starts or resets; the guest sets its clock, takes the
identity on and answers on the same port with one line ``{"ack": SEQ, "clock": SECONDS}``.
That answer, for the latest line only, is handed on as an ``IdentityAck``: the instance is
ready only once it came (``agent.compute.events``). A connection stays open until the domain
goes (one reader each, no polling); a hot spare's is opened before it is paused and becomes
its instance's (``hand_over``).
"""
import dataclasses
import itertools
import json
import logging
import os
import socket
import threading
import time
from typing import Callable

from agent import exception

LOG = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107          # sun_path
MAX_ACK_LINE = 4096            # a guest writes no more than this before its newline
MAX_IGNORED = 64               # lines that answer nothing before a connection is dropped


@dataclasses.dataclass(frozen=True)
class IdentityAck:
    """The guest of ``uuid`` acknowledged identity line ``seq``; ``clock``: its clock then
    (seconds), ``timestamp``: the host's when the answer came."""

    uuid: str
    seq: int
    clock: float
    timestamp: float


class _Conn:
    """One open connection to a guest's port: whose it is now (a hot spare's becomes its
    instance's) and the sequence number of the last line written on it."""

    def __init__(self, uuid: str, sock: socket.socket):
        self.uuid = uuid
        self.sock = sock
        self.seq: int | None = None


def _connect(path: str, timeout: float = 5.0) -> socket.socket:
    """Connect to an identity port's socket. The connection stays open: QEMU drops what it
    has not yet handed to the guest when the host side closes (seen right after a restore,
    before the guest ran), the guest answers on it, and while it is open the guest's reader
    waits in a read instead of trying again and again."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _write(sock: socket.socket, line: bytes, timeout: float = 5.0) -> None:
    sock.settimeout(timeout)
    sock.sendall(line)
    sock.settimeout(None)           # from now on only the reader waits on it


def parse_ack(line: bytes) -> tuple[int, float] | None:
    """(seq, clock) of a guest's answer line, or None for anything else (a guest is not
    trusted: a malformed line is ignored)."""
    try:
        answer = json.loads(line)
        seq, clock = answer['ack'], answer['clock']
    except (ValueError, TypeError, KeyError):
        return None
    if type(seq) is not int or type(clock) not in (int, float):
        return None
    return seq, float(clock)


class IdentityPorts:
    """The host sides of the identity ports under ``socket_dir``. Writes run on the work
    queue (``workqueue``); each open connection has a reader (``spawn``: a greenthread under
    eventlet) that hands the guest's answers to ``sink`` (thread-safe)."""

    def __init__(self, socket_dir: str, workqueue, spawn: Callable[..., None],
                 sink: Callable[[IdentityAck], None]):
        self._dir = socket_dir
        self._wq = workqueue
        self._spawn = spawn
        self._sink = sink
        self._lock = threading.Lock()
        self._open: dict[str, _Conn] = {}     # uuid -> its open connection
        self._seqs = itertools.count(1)
        self.ignored = 0               # guests' lines that were no answer to their last line

    def path(self, uuid: str) -> str:
        """The host side of instance ``uuid``'s identity port."""
        path = os.path.join(self._dir, uuid + '.sock')
        if len(path) > MAX_SOCKET_PATH:
            raise exception.ConfigError(reason='%s: longer than a unix socket path may be; '
                                               'use a shorter [libvirt] identity_socket_dir'
                                               % path)
        return path

    def make_dir(self) -> None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)

    def connect(self, uuid: str) -> None:
        """Open the host side of ``uuid``'s port without writing (a hot spare's, before it is
        paused: its guest then waits in a read, and wakes as soon as its identity comes)."""
        try:
            sock = self._wq.execute('identity.connect', _connect, self.path(uuid))
        except OSError as exc:
            raise exception.AgentError('identity port of %s: %s' % (uuid, exc)) from None
        self._watch(_Conn(uuid, sock))

    def send(self, uuid: str, identity: dict) -> int:
        """Write ``identity`` to the guest of ``uuid``, with a new sequence number and the
        host's clock (taken on the work queue, just before the write); the number (AgentError
        if its port is not there). On the open connection if there is one (a fresh one
        otherwise): an answer to an earlier line no longer counts either way."""
        line = _Line(self, uuid, identity, self.path(uuid))
        self._wq.execute('identity.write', line.write)
        line.done()
        return line.seq

    def hand_over(self, old: str, new: str, identity: dict | None) -> 'HandOver':
        """The port of ``old`` (a hot spare) becomes ``new``'s (its instance): its open
        connection at once (answers on it are ``new``'s), its socket file and ``identity``
        (if any) by the returned HandOver's steps, which the caller runs on the work queue
        (QEMU's listening socket stays bound to the file)."""
        with self._lock:
            conn = self._open.pop(old, None)
            if conn is not None:
                conn.uuid = new
                self._drop_locked(new)
                self._open[new] = conn
        return HandOver(self, old, new, identity)

    def _watch(self, conn: _Conn) -> None:
        with self._lock:
            self._drop_locked(conn.uuid)
            self._open[conn.uuid] = conn
        self._spawn(self._read_answers, conn)

    def _drop_locked(self, uuid: str) -> None:
        old = self._open.pop(uuid, None)
        if old is not None:
            try:
                old.sock.shutdown(socket.SHUT_RDWR)   # wakes its reader; it closes the socket
            except OSError:
                pass

    def _read_answers(self, conn: _Conn) -> None:
        """Until the connection ends: hand on the guest's answer to the last line written."""
        buf = b''
        ignored = 0
        try:
            while True:
                try:
                    data = conn.sock.recv(4096)
                except OSError:
                    return
                if not data:
                    return          # the domain went, or the agent closed the connection
                buf += data
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    answer = parse_ack(line)
                    with self._lock:
                        current = (answer is not None and answer[0] == conn.seq
                                   and self._open.get(conn.uuid) is conn)
                        uuid = conn.uuid
                    if not current:
                        LOG.debug('[instance: %s] identity port: ignored %r', uuid, line[:80])
                        self.ignored += 1
                        ignored += 1
                        if ignored > MAX_IGNORED:
                            LOG.warning('[instance: %s] identity port: more than %d lines that '
                                        'answer nothing: no longer read', uuid, MAX_IGNORED)
                            return
                        continue
                    self._sink(IdentityAck(uuid=uuid, seq=answer[0], clock=answer[1],
                                           timestamp=time.time()))
                if len(buf) > MAX_ACK_LINE:
                    LOG.warning('[instance: %s] identity port: a line of more than %d bytes: '
                                'no longer read', conn.uuid, MAX_ACK_LINE)
                    return
        finally:
            with self._lock:
                if self._open.get(conn.uuid) is conn:
                    del self._open[conn.uuid]
            conn.sock.close()

    def close(self, uuid: str) -> None:
        """Close the identity connection of ``uuid``, if one is open (its reader ends)."""
        with self._lock:
            self._drop_locked(uuid)

    def remove(self, uuid: str) -> None:
        """Close the connection and remove the socket file QEMU left."""
        self.close(uuid)
        try:
            os.unlink(self.path(uuid))
        except FileNotFoundError:
            pass


class _Line:
    """One identity line for the guest of ``uuid``: numbered (and made the line an answer
    must match) when made, written by ``write()`` (on the work queue: on the open connection,
    else a fresh one to ``path``), ``done()`` afterwards (a fresh connection gets its
    reader)."""

    def __init__(self, ports: IdentityPorts, uuid: str, identity: dict, path: str):
        self._ports = ports
        self._uuid = uuid
        self._identity = identity
        self._path = path
        self._fresh: socket.socket | None = None
        self.seq = next(ports._seqs)
        with ports._lock:
            self._conn = ports._open.get(uuid)
            if self._conn is not None:
                self._conn.seq = self.seq

    def write(self) -> None:
        line = (json.dumps(dict(self._identity, seq=self.seq, time=int(time.time())),
                           sort_keys=True) + '\n').encode()
        try:
            if self._conn is not None:
                try:
                    _write(self._conn.sock, line)
                    return
                except OSError:     # QEMU closed it (a new QEMU since): a fresh connection
                    pass
            sock = _connect(self._path)
            try:
                _write(sock, line)
            except OSError:
                sock.close()
                raise
        except OSError as exc:
            raise exception.AgentError('identity port of %s: %s' % (self._uuid, exc)) from None
        self._fresh = sock

    def done(self) -> None:
        if self._fresh is not None:
            conn = _Conn(self._uuid, self._fresh)
            conn.seq = self.seq
            self._fresh = None
            self._ports._watch(conn)


class HandOver:
    """A hot spare's port becoming its instance's (``IdentityPorts.hand_over``): ``move()``
    its socket file to the instance's name first (whatever fails after, the port goes with
    the instance), then ``write()`` its identity (both on the work queue, in the resume's
    call, before the resume), ``done()`` in the caller's thread at the end."""

    def __init__(self, ports: IdentityPorts, old: str, new: str, identity: dict | None):
        self._ports = ports
        self._old = old
        self._new = new
        self._line = (_Line(ports, new, identity, ports.path(new))
                      if identity is not None else None)
        self.seq = self._line.seq if self._line is not None else None

    def write(self) -> None:
        if self._line is not None:
            self._line.write()

    def move(self) -> None:
        try:
            os.rename(self._ports.path(self._old), self._ports.path(self._new))
        except OSError as exc:
            raise exception.AgentError('identity port of %s: %s' % (self._old, exc)) from None

    def done(self) -> None:
        if self._line is not None:
            self._line.done()
