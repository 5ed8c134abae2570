"""Client side of the agent's RPC API (see ``agent.rpc.server`` for the version history)."""
import threading

import oslo_messaging

TOPIC = 'compute'


class ComputeAPI:
    """Talks to the agent of node ``host``. Errors arrive as ``agent.exception`` classes.

    ``transport``: an ``agent.rpc.NodeTransports`` (each node in its own virtual host, as
    tools/setup-node.sh makes them) or one transport every node shares (tests' fakes)."""

    VERSION = '1.10'

    def __init__(self, transport, timeout: float | None = None):
        self._transport = transport
        self._timeout = timeout
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def _client_for(self, host: str):
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                transport = (self._transport.for_node(host)
                             if hasattr(self._transport, 'for_node') else self._transport)
                target = oslo_messaging.Target(topic=TOPIC, version=self.VERSION)
                client = oslo_messaging.get_rpc_client(transport, target, timeout=self._timeout)
                self._clients[host] = client
            return client

    def _cctxt(self, host: str, timeout: float | None = None):
        return self._client_for(host).prepare(server=host, version=self.VERSION,
                                              **({'timeout': timeout} if timeout else {}))

    def boot_instance(self, host: str, spec: dict) -> dict:
        """Ask node ``host`` to boot ``spec``; {job_id, uuid[, existing]}."""
        return self._cctxt(host).call({}, 'boot_instance', spec=spec)

    def delete_instance(self, host: str, uuid: str) -> dict:
        """Ask node ``host`` to delete ``uuid``; {job_id, uuid[, existing]}."""
        return self._cctxt(host).call({}, 'delete_instance', uuid=uuid)

    def stop_instance(self, host: str, uuid: str, timeout: int | None = None) -> dict:
        """Ask node ``host`` to stop ``uuid`` (``timeout``: seconds for the guest; default the
        node's)."""
        args = {'uuid': uuid} if timeout is None else {'uuid': uuid, 'timeout': timeout}
        return self._cctxt(host).call({}, 'stop_instance', **args)

    def start_instance(self, host: str, uuid: str) -> dict:
        """Ask node ``host`` to start the stopped instance ``uuid``."""
        return self._cctxt(host).call({}, 'start_instance', uuid=uuid)

    def reboot_instance(self, host: str, uuid: str, hard: bool = False) -> dict:
        """Ask node ``host`` to reboot ``uuid`` (soft, or ``hard``: a reset)."""
        return self._cctxt(host).call({}, 'reboot_instance', uuid=uuid, hard=hard)

    def get_job(self, host: str, job_id: str) -> dict:
        """A job of node ``host``."""
        return self._cctxt(host).call({}, 'get_job', job_id=job_id)

    def get_instance(self, host: str, uuid: str) -> dict:
        """An instance as node ``host`` holds it."""
        return self._cctxt(host).call({}, 'get_instance', uuid=uuid)

    def list_instances(self, host: str) -> list:
        """Every instance node ``host`` holds."""
        return self._cctxt(host).call({}, 'list_instances')

    def get_storage(self, host: str, uuids: list | None = None) -> dict:
        """Node ``host``'s storage capacity and disks (of ``uuids``, or all)."""
        return self._cctxt(host).call({}, 'get_storage', uuids=uuids)

    def get_resources(self, host: str) -> dict:
        """Node ``host``'s last usage report and tracker counters."""
        return self._cctxt(host).call({}, 'get_resources')

    def audit_resources(self, host: str) -> list:
        """Run a resource audit on node ``host``; the uuids it corrected."""
        return self._cctxt(host).call({}, 'audit_resources')

    def get_stats(self, host: str) -> dict:
        """Node ``host``'s counters."""
        return self._cctxt(host).call({}, 'get_stats')

    def write_trace(self, host: str) -> dict:
        """Have node ``host`` write its trace to its ``[trace] path``."""
        return self._cctxt(host).call({}, 'write_trace')

    def get_console_output(self, host: str, uuid: str, max_bytes: int | None = None) -> dict:
        """The tail of an instance's serial console log."""
        args = {'uuid': uuid} if max_bytes is None else {'uuid': uuid, 'max_bytes': max_bytes}
        return self._cctxt(host).call({}, 'get_console_output', **args)

    def ping(self, host: str, timeout: float | None = None) -> str:
        """'pong' from node ``host`` (``timeout``: seconds to wait)."""
        return self._cctxt(host, timeout).call({}, 'ping')
