"""Client side of the conductor's RPC API (see ``agent.conductor.manager``)."""
import time

import oslo_messaging


class ConductorAPI:
    """Client of the conductor (topic ``[conductor] topic``): reports from agents, queries from
    clients."""
    VERSION = '1.1'

    def __init__(self, transport, topic: str = 'conductor', timeout: float | None = None):
        target = oslo_messaging.Target(topic=topic, version=self.VERSION)
        self._client = oslo_messaging.get_rpc_client(transport, target, timeout=timeout)

    def report(self, host: str, states: list[dict], resources: dict | None) -> int:
        """Send one node's batch of instance states and its usage report (either may be
        empty), with when it left (1.3: conductors are upgraded before their agents)."""
        cctxt = self._client.prepare(version='1.3')
        return cctxt.call({}, 'report', host=host, states=states, resources=resources,
                          sent_at=time.time())

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

    def wait_instances(self, uuids: list[str], states: list[str], timeout: float,
                       ready: bool = False) -> dict:
        """Wait (on the conductor) until each uuid is in one of ``states`` (with ``ready``:
        and its guest is ready) or ``timeout`` passed; the rows."""
        if not ready:
            cctxt = self._client.prepare(timeout=timeout + 30)
            return cctxt.call({}, 'wait_instances', uuids=uuids, states=states, timeout=timeout)
        cctxt = self._client.prepare(timeout=timeout + 30, version='1.2')
        return cctxt.call({}, 'wait_instances', uuids=uuids, states=states, timeout=timeout,
                          ready=True)

    def report_count(self, host: str | None = None) -> int:
        """How many reports the conductor applied (from ``host``, or all)."""
        return self._client.call({}, 'report_count', host=host)
