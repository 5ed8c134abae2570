"""The agent's send connections: opened as it starts, kept while idle (agent.rpc)."""
import logging
import threading

from oslo_config import cfg
from oslo_messaging._drivers import pool as messaging_pool

from agent import rpc
from tests.unit.conftest import wait_until


class Pool(messaging_pool.Pool):
    """oslo.messaging's own pool, making stand-ins for connections (one refused at
    ``fail_at``, as a broker that is not there)."""

    def __init__(self, fail_at=None):
        super().__init__(max_size=30, min_size=2, ttl=1200)
        self.made = 0
        self.fail_at = fail_at

    def create(self, retry=None):
        assert retry == 0                       # one attempt each: start-up never hangs
        if self.made == self.fail_at:
            raise ConnectionRefusedError('no broker')
        self.made += 1
        return object()


class Transport:
    def __init__(self, pool):
        self._driver = type('Driver', (), {'_connection_pool': pool})()


def test_the_connections_are_opened_and_left_in_the_pool():
    pool = Pool()
    assert rpc.open_send_connections(Transport(pool), 8) == 8
    assert pool.made == 8 and len(pool._items) == 8
    assert rpc.open_send_connections(Transport(pool), 8) == 8     # again: the same ones
    assert pool.made == 8


def test_a_broker_that_is_not_there_leaves_what_was_opened_and_is_no_error():
    pool = Pool(fail_at=3)
    assert rpc.open_send_connections(Transport(pool), 8) == 3
    assert len(pool._items) == 3


def test_an_oslo_messaging_without_the_pool_gets_lazy_connections():
    assert rpc.open_send_connections(object(), 8) == 0


def test_the_pool_holds_that_many_kept_while_idle_unless_the_operator_said_otherwise():
    conf = cfg.ConfigOpts()
    waits = rpc.keep_send_connections(conf, 8)
    try:
        conf([])
        rabbit = conf.oslo_messaging_rabbit
        assert (rabbit.conn_pool_min_size, rabbit.rpc_conn_pool_size) == (8, 8)
        transport = rpc.get_transport(conf, 'rabbit://u:p@127.0.0.1:1/')  # connects lazily
        try:
            pool = transport._driver._connection_pool
            assert (pool._min_size, pool._max_size) == (8, 8)
        finally:
            transport.cleanup()
        conf.set_override('conn_pool_min_size', 3, group='oslo_messaging_rabbit')
        assert conf.oslo_messaging_rabbit.conn_pool_min_size == 3
    finally:
        logging.getLogger(rpc.POOL_LOGGER).removeFilter(waits)


def test_a_send_that_waits_for_a_connection_is_counted_not_logged(caplog):
    conf = cfg.ConfigOpts()
    waits = rpc.keep_send_connections(conf, 2)
    pool = Pool()
    pool._max_size = 2
    try:
        held = [pool.get(retry=0), pool.get(retry=0)]
        got = []
        with caplog.at_level(logging.WARNING, logger=rpc.POOL_LOGGER):
            third = threading.Thread(target=lambda: got.append(pool.get(retry=0)))
            third.start()
            # Counted as it starts to wait (oslo.messaging warns, then waits): only then is
            # a connection put back, which it takes.
            wait_until(lambda: waits.count == 1, what='the send waiting')
            assert got == []
            pool.put(held.pop())
            third.join(10)
        assert got and got[0] is not None and waits.count == 1 and pool.made == 2
        assert not [r for r in caplog.records if r.msg.startswith(rpc.POOL_LIMIT)]
    finally:
        logging.getLogger(rpc.POOL_LOGGER).removeFilter(waits)


def test_no_send_connections_leaves_oslo_messagings_pool_as_it_is():
    conf = cfg.ConfigOpts()
    assert rpc.keep_send_connections(conf, 0) is None
    assert 'oslo_messaging_rabbit' not in conf
