"""The Host translates libvirt's errors into the agent's own: callers never test libvirt's
error names."""
import collections

import pytest

from agent import context
from agent import exception
from tests.unit import fakelibvirt
from tests.unit.conftest import boot_spec

U1 = '11111111-2222-3333-4444-555555555555'
U2 = '22222222-2222-3333-4444-555555555555'


def test_libvirt_errors_arrive_as_the_agents_own_classes(agent):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    host = agent.driver.host
    conn = host.conn()
    with pytest.raises(exception.DomainNotFound, match='Domain not found'):
        host.call('lookupByUUIDString', conn.lookupByUUIDString, U2)
    dom = host.call('lookupByUUIDString', conn.lookupByUUIDString, U1)
    with pytest.raises(exception.DomainStateConflict, match='already running'):
        host.call('create', dom.create)

    def other():
        raise fakelibvirt.libvirtError('something else', 9999)
    with pytest.raises(exception.HypervisorError) as err:
        host.call('other', other)
    assert type(err.value) is exception.HypervisorError
    assert str(err.value) == 'libvirt other failed: something else'


def test_calls_count_for_the_job_the_context_names_and_no_other(agent):
    # One context variable tells every layer which instance and job a call belongs to: the
    # driver contract carries no counters.
    host = agent.driver.host
    conn = host.conn()
    mine = collections.Counter()
    with context.working(uuid=U1, calls=mine):
        host.call('getHostname', conn.getHostname)
        with pytest.raises(exception.DomainNotFound):
            host.call('lookupByUUIDString', conn.lookupByUUIDString, U2)
    host.call('getHostname', conn.getHostname)            # no job bound: the node's only
    assert mine == {'getHostname': 1, 'lookupByUUIDString': 1}
    assert host.calls['getHostname'] >= 2
