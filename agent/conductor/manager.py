"""The reference conductor's RPC endpoints: reports from nodes, and the control plane's
queries, on separate topics (``[conductor] topic`` and ``<topic>_control``): a node's broker
user may publish to the first only, so nodes cannot read, wait on or change rows.

Version history:
  1.0 - report_instance_states, get_instance, list_instances, wait_instances, report_count
  1.1 - report (instance states and node usage in one message), get_node, list_reports;
        every report is checked (``validate``) and refused whole with InvalidReport
  1.2 - instance rows carry readiness, ready_at and when the conductor first saw the current
        active_at / ready_at; wait_instances(ready=True) waits for ready guests
  1.3 - report carries sent_at (the agent's clock when it sent it), kept with the report
  2.0 - report carries sig (the node's key signs it) and is the report topic's one method;
        the queries are on the control topic, with forget_instance and move_instance;
        report_instance_states (unsigned) is gone
  2.1 - report states carry delete_job, power_job and domain (``agent.report``), stored;
        2.0 reports (an agent capped at 2.0) are accepted, those fields unknown
"""
import logging
import threading
import time

import oslo_messaging

from agent import exception
from agent import report as reportmod
from agent import signing
from agent.conductor import validate

LOG = logging.getLogger(__name__)

MAX_WAIT = 600.0
_EXPECTED = oslo_messaging.expected_exceptions(exception.AgentError)


def control_topic(topic: str) -> str:
    """The control plane's topic next to report topic ``topic`` (nodes cannot publish to it:
    their broker permission names the report topics only)."""
    return topic + '_control'


class ReportEndpoint:
    """Stores nodes' reports, each signed by its node's key. Bad input gets InvalidReport and
    changes nothing."""

    target = oslo_messaging.Target(version=reportmod.VERSION)

    def __init__(self, store, keys, report_delay: float = 0.0, max_future_s: float = 300.0,
                 max_rows: int = 2000, clock_ns=time.time_ns):
        self._store = store
        self._keys = keys
        self._delay = report_delay
        self._max_future_s = max_future_s
        self._max_rows = max_rows
        self._clock_ns = clock_ns
        self.refused = 0

    def _refuse(self, exc: exception.InvalidReport):
        self.refused += 1
        LOG.warning('%s', exc)
        raise exc

    @_EXPECTED
    def report(self, ctxt, host, states, resources=None, sent_at=None, sig=None):
        """Apply one node's report (validated whole: InvalidReport changes nothing); how many
        of its states applied."""
        try:
            node = validate.host(host)
        except exception.InvalidReport as exc:
            self._refuse(exc)
        key = self._keys.get(node)
        if key is None or not signing.valid(key, sig, host, states, resources, sent_at):
            self._refuse(exception.InvalidReport(
                reason='%s: not signed with that node\'s key' % node))
        try:
            now_ns = self._clock_ns()
            host, states, resources = validate.report(host, states, resources, now_ns,
                                                      self._max_future_s)
            sent_at = validate.number(sent_at, 'sent_at', 0,
                                      now_ns / 1e9 + self._max_future_s)
        except exception.InvalidReport as exc:
            self._refuse(exc)
        if self._delay:
            time.sleep(self._delay)     # testing aid: a slow conductor
        result = self._store.apply(host, states, resources, sent_at, self._max_rows)
        # One line per report: the rows are in the database.
        LOG.info('report from %s: %d states, %d applied%s%s%s', host, len(states),
                 result.applied,
                 ', %d owned by other nodes (not applied)' % len(result.foreign)
                 if result.foreign else '',
                 ', %d new refused: the node holds %d rows (max_instances_per_node)'
                 % (len(result.over_cap), self._max_rows) if result.over_cap else '',
                 '' if resources is None else ', usage generation %s' % resources['generation'])
        if result.foreign:
            LOG.warning('node %s reported instances other nodes hold: %s', host,
                        ', '.join(sorted(result.foreign)[:10]))
        return result.applied


class ControlEndpoint:
    """The control plane's queries and corrections; waits are bounded in number and time and
    hold no lock that reports need."""

    target = oslo_messaging.Target(version=reportmod.VERSION)

    def __init__(self, store, max_waits: int = 32):
        self._store = store
        self._waits = threading.BoundedSemaphore(max_waits)
        self._max_waits = max_waits

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
    def forget_instance(self, ctxt, uuid):
        """Delete an instance's row (whichever node holds it); whether there was one."""
        return self._store.forget(validate.uuid(uuid, 'uuid'))

    @_EXPECTED
    def move_instance(self, ctxt, uuid, host):
        """Give an instance's row to node ``host`` (a migration, or a squatted uuid); whether
        there was one."""
        return self._store.move(validate.uuid(uuid, 'uuid'), validate.host(host))

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
        if not self._waits.acquire(blocking=False):
            raise exception.TooManyWaits(count=self._max_waits)
        try:
            return self._store.wait_for(uuids, list(states), float(timeout), ready)
        finally:
            self._waits.release()

    @_EXPECTED
    def report_count(self, ctxt, host=None):
        """How many reports were applied (from one host, or all)."""
        return self._store.report_count(None if host is None else validate.host(host))
