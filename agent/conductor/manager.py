"""The reference conductor's RPC endpoint (topic ``[conductor] topic``).

Version history:
  1.0 - report_instance_states, get_instance, list_instances, wait_instances, report_count
  1.1 - report (instance states and node usage in one message), get_node, list_reports;
        every report is checked (``validate``) and refused whole with InvalidReport
  1.2 - instance rows carry readiness, ready_at and when the conductor first saw the current
        active_at / ready_at; wait_instances(ready=True) waits for ready guests
  1.3 - report carries sent_at (the agent's clock when it sent it), kept with the report
"""
import logging
import time

import oslo_messaging

from agent import exception
from agent.conductor import validate

LOG = logging.getLogger(__name__)

MAX_WAIT = 3600.0
_EXPECTED = oslo_messaging.expected_exceptions(exception.AgentError)


class ConductorEndpoint:
    """Stores nodes' reports; answers queries. Bad input gets InvalidReport and changes
    nothing."""

    target = oslo_messaging.Target(version='1.3')

    def __init__(self, store, report_delay: float = 0.0, max_future_s: float = 86400.0,
                 clock_ns=time.time_ns):
        self._store = store
        self._delay = report_delay
        self._max_future_s = max_future_s
        self._clock_ns = clock_ns
        self.refused = 0

    @_EXPECTED
    def report_instance_states(self, ctxt, host, states):
        """Apply a batch of instance states (the 1.0 call; ``report`` without usage)."""
        return self.report(ctxt, host, states, None)

    @_EXPECTED
    def report(self, ctxt, host, states, resources=None, sent_at=None):
        """Apply one node's report (validated whole: InvalidReport changes nothing); how many
        of its states applied."""
        try:
            now_ns = self._clock_ns()
            host, states, resources = validate.report(host, states, resources, now_ns,
                                                      self._max_future_s)
            sent_at = validate.number(sent_at, 'sent_at', 0,
                                      now_ns / 1e9 + self._max_future_s)
        except exception.InvalidReport as exc:
            self.refused += 1
            LOG.warning('%s', exc)
            raise
        if self._delay:
            time.sleep(self._delay)     # testing aid: a slow conductor
        applied = self._store.apply_report(host, states, resources, sent_at)
        LOG.debug('report from %s: %d states, %d applied', host, len(states), applied)
        for s in states:
            LOG.info('[instance: %s] %s: %s/%s', s.get('uuid'), host, s.get('vm_state'),
                     s.get('power_state'))
        if resources is not None:
            LOG.info('%s usage generation %s: %s of %s', host, resources.get('generation'),
                     resources.get('usage'), resources.get('capacity'))
        return applied

    @_EXPECTED
    def get_node(self, ctxt, host):
        """A node's last applied usage report, or None."""
        return self._store.get_node(validate.host(host))

    @_EXPECTED
    def list_reports(self, ctxt, host):
        """Every report received from ``host``, oldest first."""
        return self._store.list_reports(validate.host(host))

    @_EXPECTED
    def get_instance(self, ctxt, uuid):
        """An instance's row, or None."""
        return self._store.get(validate.uuid(uuid, 'uuid'))

    @_EXPECTED
    def list_instances(self, ctxt, host=None):
        """Every instance row, or those of one host."""
        return self._store.list_instances(None if host is None else validate.host(host))

    @_EXPECTED
    def wait_instances(self, ctxt, uuids, states, timeout, ready=False):
        """Wait until each uuid is in one of ``states`` (with ``ready``: and its guest ready;
        woken by reports, no polling) or the timeout passed; the rows."""
        if not isinstance(uuids, list) or len(uuids) > validate.MAX_STATES \
                or not isinstance(states, list):
            raise exception.InvalidReport(reason='uuids and states: lists')
        uuids = [validate.uuid(u, 'uuids[%d]' % i) for i, u in enumerate(uuids)]
        for s in states:
            validate.choice(s, 'states', validate.VM_STATES)
        timeout = validate.number(timeout, 'timeout', 0, MAX_WAIT, optional=False)
        if not isinstance(ready, bool):
            raise exception.InvalidReport(reason='ready: true or false')
        return self._store.wait_for(uuids, list(states), float(timeout), ready)

    @_EXPECTED
    def report_count(self, ctxt, host=None):
        """How many reports were applied (from one host, or all)."""
        return self._store.report_count(None if host is None else validate.host(host))
