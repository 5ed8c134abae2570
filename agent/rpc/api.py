"""Client side of the agent's RPC API (see ``agent.rpc.server`` for the version history)."""
import threading

import oslo_messaging

from agent.rpc import versions

TOPIC = 'compute'

# The version each method, and each boot-spec field, first appeared in (the server's
# history): a client capped below it refuses the call (VersionCapped) rather than send what
# an older agent would refuse less clearly.
METHODS = {'boot_instance': '1.0', 'delete_instance': '1.0', 'get_job': '1.0',
           'get_instance': '1.0', 'list_instances': '1.0', 'get_stats': '1.0', 'ping': '1.0',
           'get_storage': '1.1', 'get_resources': '1.2', 'audit_resources': '1.2',
           'write_trace': '1.4', 'get_console_output': '1.6', 'stop_instance': '1.7',
           'start_instance': '1.7', 'reboot_instance': '1.7'}
SPEC_FIELDS = {'disk_gb': '1.1', 'pool': '1.8', 'user_data': '1.9', 'ssh_keys': '1.9',
               'hostname': '1.9', 'meta': '1.9', 'image_ref': '1.10'}


class ComputeAPI:
    """Talks to the agent of node ``host``. Errors arrive as ``agent.exception`` classes.

    ``transport``: an ``agent.rpc.NodeTransports`` (each node in its own virtual host, as
    tools/setup-node.sh makes them) or one transport every node shares (tests' fakes).
    ``version_cap``: ``[upgrade_levels] compute`` (None: the newest, ``VERSION``); every call
    is sent at that version, and one that needs a later version is refused."""

    VERSION = '1.10'

    def __init__(self, transport, timeout: float | None = None,
                 version_cap: str | None = None):
        self._transport = transport
        self._timeout = timeout
        self.version = versions.cap(version_cap, self.VERSION, 'compute')
        self._clients: dict[str, object] = {}
        self._lock = threading.Lock()

    def _client_for(self, host: str):
        with self._lock:
            client = self._clients.get(host)
            if client is None:
                transport = (self._transport.for_node(host)
                             if hasattr(self._transport, 'for_node') else self._transport)
                target = oslo_messaging.Target(topic=TOPIC, version=self.version)
                client = oslo_messaging.get_rpc_client(transport, target, timeout=self._timeout,
                                                       version_cap=self.version)
                self._clients[host] = client
            return client

    def _cctxt(self, host: str, method: str, timeout: float | None = None):
        versions.check(method, METHODS[method], self.version, 'compute')
        return self._client_for(host).prepare(server=host, version=self.version,
                                              **({'timeout': timeout} if timeout else {}))

    def _call(self, host: str, method: str, *, rpc_timeout: float | None = None, **kwargs):
        """``method(**kwargs)`` on node ``host`` (``rpc_timeout``: seconds to wait for the
        answer, apart from any ``timeout`` argument of the method itself)."""
        return self._cctxt(host, method, rpc_timeout).call({}, method, **kwargs)

    def boot_instance(self, host: str, spec: dict) -> dict:
        """Ask node ``host`` to boot ``spec``; {job_id, uuid[, existing]}."""
        cctxt = self._cctxt(host, 'boot_instance')
        for field in sorted(set(spec) & set(SPEC_FIELDS)) if isinstance(spec, dict) else ():
            versions.check('boot_instance with spec field %r' % field, SPEC_FIELDS[field],
                           self.version, 'compute')
        return cctxt.call({}, 'boot_instance', spec=spec)

    def delete_instance(self, host: str, uuid: str) -> dict:
        """Ask node ``host`` to delete ``uuid``; {job_id, uuid[, existing]}."""
        return self._call(host, 'delete_instance', uuid=uuid)

    def stop_instance(self, host: str, uuid: str, timeout: int | None = None) -> dict:
        """Ask node ``host`` to stop ``uuid`` (``timeout``: seconds for the guest; default the
        node's)."""
        args = {'uuid': uuid} if timeout is None else {'uuid': uuid, 'timeout': timeout}
        return self._call(host, 'stop_instance', **args)

    def start_instance(self, host: str, uuid: str) -> dict:
        """Ask node ``host`` to start the stopped instance ``uuid``."""
        return self._call(host, 'start_instance', uuid=uuid)

    def reboot_instance(self, host: str, uuid: str, hard: bool = False) -> dict:
        """Ask node ``host`` to reboot ``uuid`` (soft, or ``hard``: a reset)."""
        return self._call(host, 'reboot_instance', uuid=uuid, hard=hard)

    def get_job(self, host: str, job_id: str) -> dict:
        """A job of node ``host``."""
        return self._call(host, 'get_job', job_id=job_id)

    def get_instance(self, host: str, uuid: str) -> dict:
        """An instance as node ``host`` holds it."""
        return self._call(host, 'get_instance', uuid=uuid)

    def list_instances(self, host: str) -> list:
        """Every instance node ``host`` holds."""
        return self._call(host, 'list_instances')

    def get_storage(self, host: str, uuids: list | None = None) -> dict:
        """Node ``host``'s storage capacity and disks (of ``uuids``, or all)."""
        return self._call(host, 'get_storage', uuids=uuids)

    def get_resources(self, host: str) -> dict:
        """Node ``host``'s last usage report and tracker counters."""
        return self._call(host, 'get_resources')

    def audit_resources(self, host: str) -> list:
        """Run a resource audit on node ``host``; the uuids it corrected."""
        return self._call(host, 'audit_resources')

    def get_stats(self, host: str) -> dict:
        """Node ``host``'s counters."""
        return self._call(host, 'get_stats')

    def write_trace(self, host: str) -> dict:
        """Have node ``host`` write its trace to its ``[trace] path``."""
        return self._call(host, 'write_trace')

    def get_console_output(self, host: str, uuid: str, max_bytes: int | None = None) -> dict:
        """The tail of an instance's serial console log."""
        args = {'uuid': uuid} if max_bytes is None else {'uuid': uuid, 'max_bytes': max_bytes}
        return self._call(host, 'get_console_output', **args)

    def ping(self, host: str, timeout: float | None = None) -> str:
        """'pong' from node ``host`` (``timeout``: seconds to wait)."""
        return self._call(host, 'ping', rpc_timeout=timeout)
