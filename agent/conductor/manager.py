"""The reference conductor's RPC endpoint (topic ``[conductor] topic``).

Version history:
  1.0 - report_instance_states, get_instance, list_instances, wait_instances, report_count
"""
import logging

import oslo_messaging

LOG = logging.getLogger(__name__)

MAX_WAIT = 3600.0


class ConductorEndpoint:
    target = oslo_messaging.Target(version='1.0')

    def __init__(self, store):
        self._store = store

    def report_instance_states(self, ctxt, host, states):
        applied = self._store.apply_report(host, states)
        LOG.debug('report from %s: %d states, %d applied', host, len(states), applied)
        for s in states:
            LOG.info('[instance: %s] %s: %s/%s', s.get('uuid'), host, s.get('vm_state'),
                     s.get('power_state'))
        return applied

    def get_instance(self, ctxt, uuid):
        return self._store.get(uuid)

    def list_instances(self, ctxt, host=None):
        return self._store.list_instances(host)

    def wait_instances(self, ctxt, uuids, states, timeout):
        return self._store.wait_for(list(uuids), list(states), min(float(timeout), MAX_WAIT))

    def report_count(self, ctxt, host=None):
        return self._store.report_count(host)
