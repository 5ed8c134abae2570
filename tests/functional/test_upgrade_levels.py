"""Rolling upgrades: the current agent serves a control plane capped at every 1.x it ever
served, a capped client refuses what its cap does not allow (before sending), and an agent
capped below its conductor's report version reports without the later fields."""
import uuid as uuidlib

import pytest

from agent import exception
from agent.rpc import api as compute_api
from agent.rpc import versions
from tests.functional import conftest

NOBODY = str(uuidlib.uuid4())      # no instance, no job of any node
# Each method with arguments that are cheap on a live node (a missing uuid is an answer too).
CALLS = {
    'delete_instance': dict(uuid=NOBODY), 'get_job': dict(job_id=NOBODY),
    'get_instance': dict(uuid=NOBODY), 'list_instances': {}, 'get_stats': {}, 'ping': {},
    'get_storage': dict(uuids=[NOBODY]), 'get_resources': {}, 'audit_resources': {},
    'write_trace': {}, 'get_console_output': dict(uuid=NOBODY),
    'stop_instance': dict(uuid=NOBODY), 'start_instance': dict(uuid=NOBODY),
    'reboot_instance': dict(uuid=NOBODY),
}
ANSWERS = (exception.InstanceNotFound, exception.JobNotFound)   # served: nothing by that uuid


def test_every_method_but_a_boot_has_a_cheap_call_here():
    assert set(CALLS) | {'boot_instance'} == set(compute_api.METHODS)


@pytest.mark.parametrize('minor', range(0, 11))
def test_the_agent_serves_a_control_client_capped_at_each_version(node, minor):
    cap = '1.%d' % minor
    api = compute_api.ComputeAPI(node.nodes, timeout=30, version_cap=cap)
    for method, args in CALLS.items():
        allowed = versions.at_least(cap, compute_api.METHODS[method])
        try:
            getattr(api, method)(node.host, **args)
            served = True
        except ANSWERS:
            served = True
        except exception.VersionCapped as exc:
            assert not allowed, '%s at %s: %s' % (method, cap, exc)
            assert compute_api.METHODS[method] in str(exc) and cap in str(exc)
            continue
        assert served and allowed, '%s was sent at %s' % (method, cap)
    for field, since in compute_api.SPEC_FIELDS.items():
        if not versions.at_least(cap, since):
            with pytest.raises(exception.VersionCapped, match=field):
                api.boot_instance(node.host, node.spec(**{field: None}))


def test_a_boot_from_a_control_plane_capped_at_1_0_runs(node):
    api = compute_api.ComputeAPI(node.nodes, timeout=30, version_cap='1.0')
    spec = node.spec()                               # no field later than 1.0
    node.created.add(spec['uuid'])
    job = api.boot_instance(node.host, spec)['job_id']
    assert node.wait_job(job)['state'] == 'done'
    row = node.wait_states([spec['uuid']], ['active'])[spec['uuid']]
    assert row['domain'] == 'ca-' + spec['uuid']      # an uncapped agent reports it (2.1)
    assert node.wait_job(api.delete_instance(node.host, spec['uuid'])['job_id'])[
        'state'] == 'done'
    node.wait_states([spec['uuid']], ['deleted'])


@pytest.fixture(scope='module')
def capped_node(tmp_path_factory):
    conftest._check_node()
    n = conftest.Node(str(tmp_path_factory.mktemp('capped')),
                      extra_config='[upgrade_levels]\nconductor = 2.0\n')
    yield from conftest._run_node(n)


def test_an_agent_capped_below_its_conductor_reports_without_the_later_fields(capped_node):
    node = capped_node
    spec = node.spec()
    job = node.boot(spec)['job_id']
    assert node.wait_job(job)['state'] == 'done'
    row = node.wait_states([spec['uuid']], ['active'])[spec['uuid']]
    assert row['boot_job'] == job and row['vm_state'] == 'active'
    assert (row['domain'], row['delete_job'], row['power_job']) == (None, None, None)
    assert node.compute.get_instance(node.host, spec['uuid'])['domain'] == 'ca-' + spec['uuid']
    node.delete([spec['uuid']])
