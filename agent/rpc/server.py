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
  1.7 - stop_instance, start_instance, reboot_instance (durable jobs, like boot and delete);
        jobs and instances gain ``result`` and ``power_job``; InstanceInvalidState
  1.8 - warm boots: boot_instance spec field ``pool`` (restored from a saved spare of that
        pool, or booted cold when it has none: the job's result says which); instances
        gain ``readiness``, ``ready_at`` and ``domain`` (the hypervisor's name); get_stats
        gains manager.warm (spares by pool)
  1.9 - boot_instance spec fields ``user_data``, ``ssh_keys``, ``hostname``, ``meta``: the
        guest's NoCloud seed
  1.10 - boot_instance spec field ``image_ref`` (an image from an image store: url, sha256,
        size; downloaded once per node into its cache); get_stats gains ``images``

Methods validate, hand work to the compute core and answer at once: none waits for libvirt.
"""
import functools

import oslo_messaging

from agent import exception
from agent.rpc import schema


def _expected(method):
    """The agent's own errors go back to the caller as they are (oslo.messaging's
    expected_exceptions), and the method keeps its signature (functools.wraps)."""
    return functools.wraps(method)(oslo_messaging.expected_exceptions(exception.AgentError)(method))


_MISSING = object()     # an argument the caller did not give (None is a value)


class ComputeEndpoint:
    """The agent's RPC methods: each checks its arguments (``schema``) and hands the work to
    the part of the compute core that does it (requests, audits), answering at once."""
    target = oslo_messaging.Target(version='1.10')

    def __init__(self, manager, stats_fn, write_trace_fn=None):
        """``manager``: agent.compute.manager.ComputeManager, whose parts serve the calls."""
        self._requests = manager.requests
        self._audits = manager.audits
        self._manager = manager         # its reports of storage and resources
        self._stats = stats_fn
        self._write_trace = write_trace_fn or (lambda: {'enabled': False})
        self.invalid_requests = 0

    def _args(self, method: str, unexpected: dict, **given) -> dict:
        """The clean arguments of ``method`` (``agent.rpc.schema``): the named ones the caller
        gave, and InvalidSpec naming any other."""
        args = dict(unexpected, **{k: v for k, v in given.items() if v is not _MISSING})
        try:
            return schema.validate(method, args)
        except exception.InvalidSpec:
            self.invalid_requests += 1
            raise

    @_expected
    def boot_instance(self, ctxt, spec=_MISSING, **unexpected):
        """Accept a boot of ``spec`` (``agent.spec``); {job_id, uuid[, existing]} at once."""
        spec = self._args('boot_instance', unexpected, spec=spec)['spec']
        try:
            return self._requests.boot_instance(spec)
        except exception.InvalidSpec:
            self.invalid_requests += 1
            raise

    @_expected
    def delete_instance(self, ctxt, uuid=_MISSING, **unexpected):
        """Accept a delete of ``uuid``; {job_id, uuid[, existing]} at once."""
        return self._requests.delete_instance(
            self._args('delete_instance', unexpected, uuid=uuid)['uuid'])

    @_expected
    def stop_instance(self, ctxt, uuid=_MISSING, timeout=_MISSING, **unexpected):
        """Accept a stop of ``uuid`` (``timeout`` seconds for the guest to power off after
        the ACPI power button, then at once); {job_id, uuid[, existing]} at once."""
        args = self._args('stop_instance', unexpected, uuid=uuid, timeout=timeout)
        return self._requests.stop_instance(args['uuid'], args.get('timeout'))

    @_expected
    def start_instance(self, ctxt, uuid=_MISSING, **unexpected):
        """Accept a start of the stopped instance ``uuid``; {job_id, uuid[, existing]}."""
        return self._requests.start_instance(
            self._args('start_instance', unexpected, uuid=uuid)['uuid'])

    @_expected
    def reboot_instance(self, ctxt, uuid=_MISSING, hard=_MISSING, **unexpected):
        """Accept a reboot of ``uuid`` (soft by ACPI, or ``hard``: a reset);
        {job_id, uuid[, existing]} at once."""
        args = self._args('reboot_instance', unexpected, uuid=uuid, hard=hard)
        return self._requests.reboot_instance(args['uuid'], args.get('hard', False))

    @_expected
    def get_job(self, ctxt, job_id=_MISSING, **unexpected):
        """A job, also from before a restart."""
        return self._requests.get_job(self._args('get_job', unexpected, job_id=job_id)['job_id'])

    @_expected
    def get_instance(self, ctxt, uuid=_MISSING, **unexpected):
        """An instance the node holds."""
        return self._requests.get_instance(
            self._args('get_instance', unexpected, uuid=uuid)['uuid'])

    @_expected
    def list_instances(self, ctxt, **unexpected):
        """Every instance the node holds."""
        self._args('list_instances', unexpected)
        return self._requests.list_instances()

    @_expected
    def get_storage(self, ctxt, uuids=_MISSING, **unexpected):
        """Capacity and the agent's disks (of ``uuids``, or all) from one shared listing."""
        return self._manager.storage_report(
            self._args('get_storage', unexpected, uuids=uuids).get('uuids'))

    @_expected
    def get_resources(self, ctxt, **unexpected):
        """The last usage report with the tracker's counters."""
        self._args('get_resources', unexpected)
        return self._manager.resource_report()

    @_expected
    def audit_resources(self, ctxt, **unexpected):
        """Run a resource audit now; returns the uuids whose usage it corrected."""
        self._args('audit_resources', unexpected)
        return self._audits.audit()

    @_expected
    def get_stats(self, ctxt, **unexpected):
        """The agent's counters."""
        self._args('get_stats', unexpected)
        return dict(self._stats(), invalid_requests=self.invalid_requests)

    @_expected
    def write_trace(self, ctxt, **unexpected):
        """Write the trace recorded so far to ``[trace] path``; {path, events, tracks,
        dropped}, or {enabled: false} when tracing is off."""
        self._args('write_trace', unexpected)
        return self._write_trace()

    @_expected
    def get_console_output(self, ctxt, uuid=_MISSING, max_bytes=_MISSING, **unexpected):
        """The tail of an instance's serial console log: {uuid, output, size, truncated}."""
        args = self._args('get_console_output', unexpected, uuid=uuid, max_bytes=max_bytes)
        return self._requests.console_output(args['uuid'], args.get('max_bytes'))

    @_expected
    def ping(self, ctxt, **unexpected):
        """'pong'."""
        self._args('ping', unexpected)
        return 'pong'
