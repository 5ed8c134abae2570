"""A rogue node: node B's real credentials (tools/setup-node.sh --node) against node A, a real
agent and conductor, over the real RabbitMQ with TLS. Every attempt is refused or harmless; A
answers every ping itself and its rows do not change.

Before per-node identities, every node shared one broker user: a second RPC server on A's
target answered half of A's pings, any node could report as A (or from far in the future, or
squat A's uuids), and read, wait on and flood the conductor (issue 24).
"""
import concurrent.futures
import json
import subprocess
import sys
import uuid as uuidlib

import pytest

from agent import exception
from tests.functional import conftest

CAP = 50          # the target's max_instances_per_node


@pytest.fixture(scope='module')
def target(tmp_path_factory):
    conftest._check_node()
    node = conftest.Node(str(tmp_path_factory.mktemp('rogue-target')), extra_config=(
        '[conductor]\nmax_instances_per_node = %d\nmax_waits = 8\n' % CAP))
    yield from conftest._run_node(node)


@pytest.fixture(scope='module')
def rogue_creds():
    name = 'rogue-%s' % uuidlib.uuid4().hex[:8]
    creds = conftest.node_credentials(name)
    try:
        yield name, creds
    finally:
        conftest.remove_node_credentials(name)


def _rows(node) -> dict:
    return {r['uuid']: (r['host'], r['vm_state'], r['seq']) for r in
            node.conductor.list_instances(node.host)}


def test_a_rogue_node_cannot_serve_report_as_or_query_for_another(target, rogue_creds):
    node = target
    name, creds = rogue_creds
    spec = node.spec()
    node.boot(spec)
    node.wait_states([spec['uuid']], ['active'])
    before = _rows(node)
    run = subprocess.run([sys.executable, '-m', 'tests.functional.rogue', creds, node.host,
                          node.topic, spec['uuid'], str(CAP)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(out, indent=1))
    refused = {k: v for k, v in out.items() if v.startswith('refused')}
    # Every attempt on A's queues, on the fleet's exchange and queues, on the control topic,
    # and every report in A's name is refused by the broker or the conductor.
    assert set(out) - set(refused) == {'squat A uuid', 'flood rows'}, out
    assert 'not signed with that node' in out['report as A signed with own key']
    assert 'not signed with that node' in out['report as A unsigned']
    assert 'seq' in out['own future seq beyond minutes']
    # Harmless: the squat applied nothing; the flood stopped at the rogue's cap.
    assert out['squat A uuid'] == 'done: 0', out
    assert out['flood rows'] == 'done: %d' % CAP, out
    # A answers every ping itself, and its rows are what they were.
    assert [node.compute.ping(node.host) for _ in range(20)] == ['pong'] * 20
    assert _rows(node) == before
    assert len(node.conductor.list_instances(name)) == CAP
    node.delete([spec['uuid']])
    for row in node.conductor.list_instances(name):     # the control plane cleans up
        assert node.conductor.forget_instance(row['uuid'])


def test_waits_are_bounded_and_never_hold_up_reports(target):
    """max_waits = 8 here: of 12 waits at once, 4 are refused (the 8 others wait until the
    boot below: nothing ends them sooner); they do not keep the node's reports from being
    applied, which wake them."""
    node = target
    spec = node.spec()
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        waits = [pool.submit(node.conductor.wait_instances, [spec['uuid']], ['active'], 300)
                 for _ in range(12)]
        refused = set()
        while len(refused) < 4:
            done, _ = concurrent.futures.wait(set(waits) - refused,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            refused |= done
        assert len(refused) == 4
        for w in refused:
            with pytest.raises(exception.TooManyWaits):
                w.result()
        node.boot(spec)
        rows = [w.result(timeout=300) for w in waits if w not in refused]
    assert [r[spec['uuid']]['vm_state'] for r in rows] == ['active'] * 8
    with pytest.raises(exception.InvalidReport, match='timeout'):
        node.conductor._client.call({}, 'wait_instances', uuids=[spec['uuid']],
                                    states=['active'], timeout=3600)
    node.delete([spec['uuid']])
