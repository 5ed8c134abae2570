"""The agent's RPC endpoint (topic ``compute``, server = the node's host name).

Version history:
  1.0 - boot_instance, delete_instance, get_job, get_instance, list_instances, get_stats, ping
  1.1 - get_storage; boot_instance spec field disk_gb
  1.2 - get_resources, audit_resources
  1.3 - every method checks its arguments against ``agent.rpc.schema`` (unknown ones refused)
  1.4 - write_trace
  1.5 - trust: delete_instance of a uuid the node does not hold records nothing (job_id None)
        and a repeated delete answers the accepted job (existing); boot_instance may raise
        UuidTaken, InvalidImage and AcceptanceUnknown; NICs limited by [network]
  1.6 - get_console_output

Methods validate, hand work to the manager and answer at once: none waits for libvirt.
"""
import oslo_messaging

from agent import exception
from agent.rpc import schema

_EXPECTED = oslo_messaging.expected_exceptions(exception.AgentError)


class ComputeEndpoint:
    target = oslo_messaging.Target(version='1.6')

    def __init__(self, manager, stats_fn, write_trace_fn=None):
        self._manager = manager
        self._stats = stats_fn
        self._write_trace = write_trace_fn or (lambda: {'enabled': False})
        self.invalid_requests = 0

    def _args(self, method: str, args: dict) -> dict:
        try:
            return schema.validate(method, args)
        except exception.InvalidSpec:
            self.invalid_requests += 1
            raise

    @_EXPECTED
    def boot_instance(self, ctxt, **args):
        spec = self._args('boot_instance', args)['spec']
        try:
            return self._manager.boot_instance(spec)
        except exception.InvalidSpec:
            self.invalid_requests += 1
            raise

    @_EXPECTED
    def delete_instance(self, ctxt, **args):
        return self._manager.delete_instance(self._args('delete_instance', args)['uuid'])

    @_EXPECTED
    def get_job(self, ctxt, **args):
        return self._manager.get_job(self._args('get_job', args)['job_id'])

    @_EXPECTED
    def get_instance(self, ctxt, **args):
        return self._manager.get_instance(self._args('get_instance', args)['uuid'])

    @_EXPECTED
    def list_instances(self, ctxt, **args):
        self._args('list_instances', args)
        return self._manager.list_instances()

    @_EXPECTED
    def get_storage(self, ctxt, **args):
        return self._manager.storage_report(self._args('get_storage', args).get('uuids'))

    @_EXPECTED
    def get_resources(self, ctxt, **args):
        self._args('get_resources', args)
        return self._manager.resource_report()

    @_EXPECTED
    def audit_resources(self, ctxt, **args):
        """Run a resource audit now; returns the uuids whose usage it corrected."""
        self._args('audit_resources', args)
        return self._manager.audit()

    @_EXPECTED
    def get_stats(self, ctxt, **args):
        self._args('get_stats', args)
        return dict(self._stats(), invalid_requests=self.invalid_requests)

    @_EXPECTED
    def write_trace(self, ctxt, **args):
        """Write the trace recorded so far to ``[trace] path``; {path, events, tracks,
        dropped}, or {enabled: false} when tracing is off."""
        self._args('write_trace', args)
        return self._write_trace()

    @_EXPECTED
    def get_console_output(self, ctxt, **args):
        """The tail of an instance's serial console log: {uuid, output, size, truncated}."""
        args = self._args('get_console_output', args)
        return self._manager.console_output(args['uuid'], args.get('max_bytes'))

    @_EXPECTED
    def ping(self, ctxt, **args):
        self._args('ping', args)
        return 'pong'
