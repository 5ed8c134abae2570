"""The host side of the identity port (agent.virt.libvirt.identity), against a real unix socket
playing the guest's port."""
import json
import os
import socket

import pytest

from agent import exception
from agent.virt.libvirt import identity as videntity
from agent.workqueue import native_runtime
from tests.unit.conftest import wait_until

U1 = '11111111-2222-3333-4444-555555555555'


class Port:
    """QEMU's end: a listening socket; ``accept`` hands back the guest's side of one
    connection, ``line`` reads what the host wrote."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.sock.settimeout(5)

    def accept(self):
        conn, _ = self.sock.accept()
        conn.settimeout(5)
        return conn

    @staticmethod
    def line(conn):
        data = b''
        while not data.endswith(b'\n'):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        return json.loads(data)


@pytest.fixture
def ports(tmp_path):
    runtime = native_runtime(2)
    acks = []
    ports = videntity.IdentityPorts(str(tmp_path / 'id'), runtime.workqueue, runtime.spawn,
                                    acks.append)
    ports.make_dir()
    ports.acks = acks
    yield ports
    runtime.workqueue.shutdown()


def test_the_guests_answer_to_its_latest_line_is_handed_on_and_nothing_else(ports):
    port = Port(ports.path(U1))
    first = ports.send(U1, {'uuid': U1})
    guest = port.accept()
    line = Port.line(guest)
    assert line['uuid'] == U1 and line['seq'] == first and isinstance(line['time'], int)
    second = ports.send(U1, {'uuid': U1})       # a reset: told again, on the open connection
    assert Port.line(guest)['seq'] == second > first
    guest.sendall(b'{"ack": %d, "clock": 5}\n' % first)            # not the latest line
    guest.sendall(b'not json\n{"clock": 5}\n{"ack": %d, "clock": "x"}\n' % second)
    guest.sendall(b'{"ack": %d, "clock": 1700000000.5}\n' % second)
    wait_until(lambda: ports.acks, what='the answer')
    [ack] = ports.acks
    assert (ack.uuid, ack.seq, ack.clock) == (U1, second, 1700000000.5)
    assert ports.ignored == 4
    ports.remove(U1)
    assert guest.recv(10) == b'' and not os.path.exists(ports.path(U1))


def test_a_connection_qemu_closed_is_replaced_by_a_fresh_one(ports):
    port = Port(ports.path(U1))
    ports.send(U1, {'uuid': U1})
    guest = port.accept()
    Port.line(guest)
    guest.close()                                # a new QEMU (stopped, started again)
    seq = ports.send(U1, {'uuid': U1})
    guest = port.accept()
    assert Port.line(guest)['seq'] == seq
    guest.sendall(b'{"ack": %d, "clock": 1}\n' % seq)
    wait_until(lambda: ports.acks, what='the answer')


def test_a_hot_spares_open_port_becomes_its_instances(ports):
    spare = 'aaaaaaaa-2222-3333-4444-555555555555'
    port = Port(ports.path(spare))
    ports.connect(spare)                         # before the spare is paused
    guest = port.accept()
    handover = ports.hand_over(spare, U1, {'uuid': U1})   # taken by instance U1
    handover.move()                              # both before the resume
    handover.write()
    handover.done()
    assert os.path.exists(ports.path(U1)) and not os.path.exists(ports.path(spare))
    seq = handover.seq
    line = Port.line(guest)                      # on the connection opened for the spare
    assert line['uuid'] == U1 and line['seq'] == seq
    guest.sendall(b'{"ack": %d, "clock": 1}\n' % seq)
    wait_until(lambda: ports.acks, what='the answer')
    assert ports.acks[0].uuid == U1
    port.sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        port.sock.accept()                       # no second connection was made


def test_a_guest_that_writes_an_endless_line_is_no_longer_read(ports):
    port = Port(ports.path(U1))
    ports.send(U1, {'uuid': U1})
    guest = port.accept()
    Port.line(guest)
    guest.sendall(b'x' * (videntity.MAX_ACK_LINE * 4))      # fits the socket's buffer
    try:
        assert guest.recv(10) == b''              # the host closed it,
    except ConnectionResetError:                  # with unread data: a reset
        pass
    assert ports.acks == []


def test_a_guest_that_floods_lines_that_answer_nothing_is_no_longer_read(ports):
    port = Port(ports.path(U1))
    ports.send(U1, {'uuid': U1})
    guest = port.accept()
    Port.line(guest)
    guest.sendall(b'{}\n' * (videntity.MAX_IGNORED + 1))
    try:
        assert guest.recv(10) == b''              # the host closed it
    except ConnectionResetError:
        pass
    assert ports.ignored == videntity.MAX_IGNORED + 1 and ports.acks == []


def test_a_port_that_is_not_there_is_an_agent_error(ports):
    with pytest.raises(exception.AgentError, match='identity port of %s' % U1):
        ports.send(U1, {'uuid': U1})


@pytest.mark.parametrize('line, answer', [
    (b'{"ack": 3, "clock": 12}', (3, 12.0)),
    (b'{"ack": 3, "clock": 12.5, "extra": 1}', (3, 12.5)),
    (b'{"ack": true, "clock": 12}', None),
    (b'{"ack": 3, "clock": null}', None),
    (b'{"ack": 3}', None),
    (b'3', None),
    (b'\xff\xfe', None),
])
def test_only_a_well_formed_answer_is_one(line, answer):
    assert videntity.parse_ack(line) == answer
