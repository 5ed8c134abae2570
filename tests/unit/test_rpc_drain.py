"""agent.rpc.drain on a listener it does not know (oslo.messaging's in-process fake driver):
nothing is changed and the stop goes on. The rabbit path is tested against RabbitMQ
(tests/functional/test_conductor_store.py: a conductor restart answers every report)."""
import logging

import oslo_messaging
import pytest
from oslo_config import cfg

from agent.rpc import drain


class Endpoint:
    target = oslo_messaging.Target(version='1.0')

    def ping(self, ctxt):
        return 'pong'


@pytest.mark.parametrize('started', [True, False])
def test_a_listener_it_does_not_know_is_left_alone_and_said(caplog, started):
    conf = cfg.ConfigOpts()
    transport = oslo_messaging.get_rpc_transport(conf, url='fake:/')
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic='t', server='s'), [Endpoint()])
    if started:
        server.start()
        server.stop()
    with caplog.at_level(logging.WARNING):
        assert drain.leave_unacked(server) == -1
    assert 'may be lost' in caplog.text
    if started:
        server.wait()
    transport.cleanup()
