"""A warm or pool instance's identity port: a virtio-serial port whose host side is a unix
socket; the agent writes the instance's identity (one JSON line) into it each time the guest
starts."""
import json
import os
import socket

from agent import exception

MAX_SOCKET_PATH = 107          # sun_path


def _open_and_write(path: str, line: bytes, timeout: float = 5.0) -> socket.socket:
    """Connect to the identity port's socket and write ``line``; the connection is returned
    open: QEMU drops what it has not yet handed to the guest when the host side closes (seen
    right after a restore, before the guest ran), so it stays open until the domain goes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line)
    except OSError:
        sock.close()
        raise
    return sock


class IdentityPorts:
    """The host sides of the identity ports under ``socket_dir``; writes run on the work
    queue (``workqueue``)."""

    def __init__(self, socket_dir: str, workqueue):
        self._dir = socket_dir
        self._wq = workqueue
        self._open: dict = {}          # instance uuid -> open connection

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

    def send(self, uuid: str, identity: dict) -> None:
        """Write ``identity`` to the guest of ``uuid`` (AgentError if its port is not
        there)."""
        line = (json.dumps(identity, sort_keys=True) + '\n').encode()
        self.close(uuid)
        try:
            self._open[uuid] = self._wq.execute('identity.write', _open_and_write,
                                                self.path(uuid), line)
        except OSError as exc:
            raise exception.AgentError('identity port of %s: %s' % (uuid, exc)) from None

    def close(self, uuid: str) -> None:
        """Close the identity connection of ``uuid``, if one is open."""
        sock = self._open.pop(uuid, None)
        if sock is not None:
            sock.close()

    def remove(self, uuid: str) -> None:
        """Close the connection and remove the socket file QEMU left."""
        self.close(uuid)
        try:
            os.unlink(self.path(uuid))
        except FileNotFoundError:
            pass
