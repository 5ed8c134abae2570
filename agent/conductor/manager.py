"""The reference conductor's RPC endpoint (topic ``[conductor] topic``).

Version history:
  1.0 - report_instance_states, get_instance, list_instances, wait_instances, report_count
  1.1 - report (instance states and node usage in one message), get_node, list_reports
"""
import logging
import time

import oslo_messaging

LOG = logging.getLogger(__name__)

MAX_WAIT = 3600.0


class ConductorEndpoint:
    target = oslo_messaging.Target(version='1.1')

    def __init__(self, store, report_delay: float = 0.0):
        self._store = store
        self._delay = report_delay

    def report_instance_states(self, ctxt, host, states):
        return self.report(ctxt, host, states, None)

    def report(self, ctxt, host, states, resources=None):
        if self._delay:
            time.sleep(self._delay)     # testing aid: a slow conductor
        applied = self._store.apply_report(host, states, resources)
        LOG.debug('report from %s: %d states, %d applied', host, len(states), applied)
        for s in states:
            LOG.info('[instance: %s] %s: %s/%s', s.get('uuid'), host, s.get('vm_state'),
                     s.get('power_state'))
        if resources is not None:
            LOG.info('%s usage generation %s: %s of %s', host, resources.get('generation'),
                     resources.get('usage'), resources.get('capacity'))
        return applied

    def get_node(self, ctxt, host):
        return self._store.get_node(host)

    def list_reports(self, ctxt, host):
        return self._store.list_reports(host)

    def get_instance(self, ctxt, uuid):
        return self._store.get(uuid)

    def list_instances(self, ctxt, host=None):
        return self._store.list_instances(host)

    def wait_instances(self, ctxt, uuids, states, timeout):
        return self._store.wait_for(list(uuids), list(states), min(float(timeout), MAX_WAIT))

    def report_count(self, ctxt, host=None):
        return self._store.report_count(host)
