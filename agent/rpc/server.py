"""The agent's RPC endpoint (topic ``compute``, server = the node's host name).

Version history:
  1.0 - boot_instance, delete_instance, get_job, get_instance, list_instances, get_stats, ping
  1.1 - get_storage; boot_instance spec field disk_gb
  1.2 - get_resources, audit_resources

Methods validate, hand work to the manager and answer at once: none waits for libvirt.
"""
import oslo_messaging

from agent import exception

_EXPECTED = oslo_messaging.expected_exceptions(exception.AgentError)


class ComputeEndpoint:
    target = oslo_messaging.Target(version='1.2')

    def __init__(self, manager, stats_fn):
        self._manager = manager
        self._stats = stats_fn

    @_EXPECTED
    def boot_instance(self, ctxt, spec):
        return self._manager.boot_instance(spec)

    @_EXPECTED
    def delete_instance(self, ctxt, uuid):
        return self._manager.delete_instance(uuid)

    @_EXPECTED
    def get_job(self, ctxt, job_id):
        return self._manager.get_job(job_id)

    @_EXPECTED
    def get_instance(self, ctxt, uuid):
        return self._manager.get_instance(uuid)

    def list_instances(self, ctxt):
        return self._manager.list_instances()

    @_EXPECTED
    def get_storage(self, ctxt, uuids=None):
        return self._manager.storage_report(uuids)

    def get_resources(self, ctxt):
        return self._manager.resource_report()

    @_EXPECTED
    def audit_resources(self, ctxt):
        """Run a resource audit now; returns the uuids whose usage it corrected."""
        return self._manager.audit()

    def get_stats(self, ctxt):
        return self._stats()

    def ping(self, ctxt):
        return 'pong'
