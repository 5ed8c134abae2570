"""Prometheus metrics: what the agent did, read back from the exposition text and over HTTP."""
import socket
import urllib.request
import uuid as uuidlib

import pytest
from prometheus_client import parser

from agent import exception
from agent import metrics
from tests.unit.conftest import Agent, boot_spec


def _samples(text: str) -> dict:
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def measured(conf, hv):
    parts = {}
    m = metrics.Metrics(lambda: parts)
    a = Agent(conf, hv, metrics=m)
    parts.update(driver=a.driver, commands=a.commands, reporter=a.reporter, manager=a.manager)
    yield a, m
    m.stop()
    a.stop()


def test_metrics_count_boots_calls_commands_reports_and_jobs(measured):
    a, m = measured
    uuids = [str(uuidlib.uuid4()) for _ in range(3)]
    for i, u in enumerate(uuids):
        answer = a.manager.requests.boot_instance(boot_spec(u, **({'disk_gb': 1} if i == 0 else {})))
        assert a.wait_job(answer['job_id'])['state'] == 'done'
    for u in uuids:
        a.wait_reported(u, 'active')
    with pytest.raises(exception.InsufficientResources):
        a.manager.requests.boot_instance(boot_spec(str(uuidlib.uuid4()), memory_mb=10 ** 6))
    s = _samples(m.exposition().decode())

    assert s[('compute_agent_libvirt_calls_total', (('op', 'defineXML'),))] == 3
    assert s[('compute_agent_libvirt_calls_total', (('op', 'createWithFlags'),))] == 3
    assert s[('compute_agent_storage_commands_total', (('command', 'lvcreate'),))] == 1
    assert s[('compute_agent_boot_to_active_seconds_count', ())] == 3
    assert s[('compute_agent_boot_job_seconds_count', (('result', 'done'),))] == 3
    assert s[('compute_agent_request_seconds_count', (('method', 'boot_instance'),))] == 3
    assert s[('compute_agent_workqueue_wait_seconds_count', (('kind', 'libvirt'),))] >= 6
    assert s[('compute_agent_workqueue_wait_seconds_count', (('kind', 'storage'),))] >= 1
    assert s[('compute_agent_workqueue_wait_seconds_count', (('kind', 'journal'),))] >= 1
    assert s[('compute_agent_jobs', (('state', 'done'),))] == 3
    assert s[('compute_agent_jobs', (('state', 'failed'),))] == 0
    assert s[('compute_agent_instances', (('vm_state', 'active'),))] == 3
    assert s[('compute_agent_claims_total', (('outcome', 'claimed'),))] == 3
    assert s[('compute_agent_claims_total', (('outcome', 'refused'),))] == 1
    assert s[('compute_agent_reports_sent_total', ())] == a.reporter.reports_sent >= 1
    assert s[('compute_agent_report_states_sent_total', ())] == a.reporter.states_sent
    assert (s[('compute_agent_usage_reports_total', (('outcome', 'sent'),))]
            == a.reporter.resource_reports_sent >= 1)
    assert s[('compute_agent_journal_commits_total', ())] == a.journal.commits >= 1


def test_metrics_are_served_over_http(measured):
    _a, m = measured
    port = m.serve('127.0.0.1', 0)
    with urllib.request.urlopen('http://127.0.0.1:%d/metrics' % port, timeout=5) as answer:
        assert answer.status == 200
        body = answer.read().decode()
    assert 'compute_agent_libvirt_calls_total{op="open"} 1.0' in body
    assert '# TYPE compute_agent_boot_to_active_seconds histogram' in body


def test_a_taken_port_leaves_the_agent_without_metrics_not_down(measured, caplog):
    _a, m = measured
    taken = socket.socket()
    taken.bind(('127.0.0.1', 0))
    taken.listen()
    try:
        assert m.serve('127.0.0.1', taken.getsockname()[1]) is None
    finally:
        taken.close()
    assert 'metrics endpoint' in caplog.text
