"""The control plane's client against the agent's real endpoint, over oslo.messaging's fake
driver: every argument a client method takes arrives as given, and a capped client sends
only what its cap allows."""
import oslo_messaging
import pytest
from oslo_config import cfg

from agent import exception
from agent import rpc
from agent.rpc import api as compute_api
from agent.rpc import server

U1 = '11111111-2222-3333-4444-555555555555'


class Manager:
    """Records what reached it (the parts the endpoint calls are this one object)."""

    def __init__(self):
        self.calls = []
        self.requests = self.audits = self

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, a)) or {}


@pytest.fixture
def served():
    # The global CONF, as the agent's processes have it: oslo.messaging registers some of the
    # options a client reads (tracing, metrics) there only. Nothing here changes it.
    transport = rpc.get_transport(cfg.CONF, 'fake:/')
    mgr = Manager()
    rpc_server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic=compute_api.TOPIC, server='n1'),
        [server.ComputeEndpoint(mgr, lambda: {'stats': True})], executor='threading')
    rpc_server.start()
    yield transport, mgr
    rpc_server.stop()
    rpc_server.wait()
    transport.cleanup()


def test_every_argument_of_a_client_method_arrives_as_given(served):
    transport, mgr = served
    api = compute_api.ComputeAPI(transport, timeout=5)
    api.stop_instance('n1', U1, timeout=3)               # the guest's timeout, not the RPC's
    api.stop_instance('n1', U1)
    api.reboot_instance('n1', U1, hard=True)
    api.get_console_output('n1', U1, max_bytes=100)
    assert mgr.calls == [('stop_instance', (U1, 3)), ('stop_instance', (U1, None)),
                         ('reboot_instance', (U1, True)),
                         ('console_output', (U1, 100))]
    assert api.ping('n1', timeout=2) == 'pong'


@pytest.mark.parametrize('cap, allowed', [('1.6', False), ('1.7', True)])
def test_a_capped_client_sends_only_what_its_cap_allows(served, cap, allowed):
    transport, mgr = served
    api = compute_api.ComputeAPI(transport, timeout=5, version_cap=cap)
    if allowed:
        api.start_instance('n1', U1)
        assert mgr.calls == [('start_instance', (U1,))]
    else:
        expected = 'start_instance needs RPC version 1.7; this client is capped at 1.6'
        with pytest.raises(exception.VersionCapped, match=expected):
            api.start_instance('n1', U1)
        assert mgr.calls == []                          # nothing was sent
    assert api.ping('n1') == 'pong'                     # served at the capped version
