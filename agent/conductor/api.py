"""Client side of the conductor's RPC API (see ``agent.conductor.manager``): ``ReportAPI`` for
nodes (the report topic), ``ConductorAPI`` for the control plane (the control topic)."""
import time

import oslo_messaging

from agent import report as reportmod
from agent import signing
from agent.conductor import manager
from agent.rpc import versions

VERSION = reportmod.VERSION


class ReportAPI:
    """A node's reports to the conductor (topic ``[conductor] topic``), signed with its key.
    ``version_cap``: ``[upgrade_levels] conductor`` (None: the newest); reports are sent at
    that version, without the fields of later ones."""

    def __init__(self, transport, topic: str = 'conductor', key: bytes | None = None,
                 timeout: float | None = None, version_cap: str | None = None):
        self.version = versions.cap(version_cap, VERSION, 'conductor')
        target = oslo_messaging.Target(topic=topic, version=self.version)
        self._client = oslo_messaging.get_rpc_client(transport, target, timeout=timeout,
                                                     version_cap=self.version)
        self._fields = reportmod.fields(self.version)
        self._key = key

    def report(self, host: str, states: list[dict], resources: dict | None) -> int:
        """Send one node's batch of instance states and its usage report (either may be
        empty), with when it left; how many states the conductor applied."""
        if self.version != VERSION:
            states = [{f: s.get(f) for f in self._fields} for s in states]
        sent_at = time.time()
        sig = (None if self._key is None
               else signing.sign(self._key, host, states, resources, sent_at))
        return self._client.call({}, 'report', host=host, states=states, resources=resources,
                                 sent_at=sent_at, sig=sig)


class ConductorAPI:
    """The control plane's client of the conductor: queries, waits and corrections (the
    control topic next to ``topic``, which nodes' broker users cannot publish to)."""

    def __init__(self, transport, topic: str = 'conductor', timeout: float | None = None):
        target = oslo_messaging.Target(topic=manager.control_topic(topic), version=VERSION)
        self._client = oslo_messaging.get_rpc_client(transport, target, timeout=timeout)

    def get_node(self, host: str) -> dict | None:
        """A node's last applied usage report, or None."""
        return self._client.call({}, 'get_node', host=host)

    def list_reports(self, host: str) -> list[dict]:
        """Every report received from ``host``, oldest first (tests and tools)."""
        return self._client.call({}, 'list_reports', host=host)

    def get_instance(self, uuid: str) -> dict | None:
        """An instance's row as the conductor holds it, or None."""
        return self._client.call({}, 'get_instance', uuid=uuid)

    def list_instances(self, host: str | None = None) -> list[dict]:
        """Every instance row, or those of node ``host``."""
        return self._client.call({}, 'list_instances', host=host)

    def forget_instance(self, uuid: str) -> bool:
        """Delete an instance's row; whether there was one."""
        return self._client.call({}, 'forget_instance', uuid=uuid)

    def move_instance(self, uuid: str, host: str) -> bool:
        """Give an instance's row to node ``host``; whether there was one."""
        return self._client.call({}, 'move_instance', uuid=uuid, host=host)

    def wait_instances(self, uuids: list[str], states: list[str], timeout: float,
                       ready: bool = False) -> dict:
        """Wait (on the conductor) until each uuid is in one of ``states`` (with ``ready``:
        and its guest is ready) or ``timeout`` passed; the rows. A wait longer than the
        conductor's longest is several calls."""
        deadline = time.monotonic() + timeout
        while True:
            part = min(max(0.0, deadline - time.monotonic()), manager.MAX_WAIT)
            cctxt = self._client.prepare(timeout=part + 30)
            rows = cctxt.call({}, 'wait_instances', uuids=uuids, states=states, timeout=part,
                              ready=ready)
            if time.monotonic() >= deadline or all(
                    r and r['vm_state'] in states and (not ready or r['readiness'] == 'ready')
                    for r in rows.values()):
                return rows

    def report_count(self, host: str | None = None) -> int:
        """How many reports the conductor applied (from ``host``, or all)."""
        return self._client.call({}, 'report_count', host=host)
