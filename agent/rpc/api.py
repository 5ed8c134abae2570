"""Client side of the agent's RPC API (see ``agent.rpc.server`` for the version history)."""
import oslo_messaging

TOPIC = 'compute'


class ComputeAPI:
    """Talks to the agent of node ``host``. Errors arrive as ``agent.exception`` classes."""

    VERSION = '1.6'

    def __init__(self, transport, timeout: float | None = None):
        target = oslo_messaging.Target(topic=TOPIC, version=self.VERSION)
        self._client = oslo_messaging.get_rpc_client(transport, target, timeout=timeout)

    def _cctxt(self, host: str, timeout: float | None = None):
        return self._client.prepare(server=host, version=self.VERSION,
                                    **({'timeout': timeout} if timeout else {}))

    def boot_instance(self, host: str, spec: dict) -> dict:
        return self._cctxt(host).call({}, 'boot_instance', spec=spec)

    def delete_instance(self, host: str, uuid: str) -> dict:
        return self._cctxt(host).call({}, 'delete_instance', uuid=uuid)

    def get_job(self, host: str, job_id: str) -> dict:
        return self._cctxt(host).call({}, 'get_job', job_id=job_id)

    def get_instance(self, host: str, uuid: str) -> dict:
        return self._cctxt(host).call({}, 'get_instance', uuid=uuid)

    def list_instances(self, host: str) -> list:
        return self._cctxt(host).call({}, 'list_instances')

    def get_storage(self, host: str, uuids: list | None = None) -> dict:
        return self._cctxt(host).call({}, 'get_storage', uuids=uuids)

    def get_resources(self, host: str) -> dict:
        return self._cctxt(host).call({}, 'get_resources')

    def audit_resources(self, host: str) -> list:
        return self._cctxt(host).call({}, 'audit_resources')

    def get_stats(self, host: str) -> dict:
        return self._cctxt(host).call({}, 'get_stats')

    def write_trace(self, host: str) -> dict:
        return self._cctxt(host).call({}, 'write_trace')

    def get_console_output(self, host: str, uuid: str, max_bytes: int | None = None) -> dict:
        args = {'uuid': uuid} if max_bytes is None else {'uuid': uuid, 'max_bytes': max_bytes}
        return self._cctxt(host).call({}, 'get_console_output', **args)

    def ping(self, host: str, timeout: float | None = None) -> str:
        return self._cctxt(host, timeout).call({}, 'ping')
