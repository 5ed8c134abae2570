"""RPC plumbing shared by the agent, the conductor and the CLI."""
import logging
import os
import threading

import oslo_messaging
from oslo_messaging import opts as messaging_opts

LOG = logging.getLogger(__name__)

EXMODS = ['agent.exception']   # exceptions clients re-raise as the same class
NODE_VHOST_PREFIX = 'node-'    # node NAME's own virtual host (tools/setup-node.sh --node)


def get_transport(conf, url: str | None = None):
    return oslo_messaging.get_rpc_transport(conf, url=url, allowed_remote_exmods=EXMODS)


RABBIT_GROUP = 'oslo_messaging_rabbit'          # where oslo.messaging's pool options live
POOL_LOGGER = 'oslo.messaging._drivers.pool'    # oslo.log names it so
POOL_LIMIT = 'Connection pool limit exceeded'   # its warning, at every wait for a connection


class SendWaits(logging.Filter):
    """Counts the sends that waited for one of the pool's connections (oslo.messaging warns
    at each; here that is by design, so counted, not logged)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith(POOL_LIMIT):
            self.count += 1
            return False
        return True


def keep_send_connections(conf, count: int) -> SendWaits | None:
    """oslo.messaging's send pool holds ``count`` connections, kept open while idle (its
    ``conn_pool_min_size`` and ``rpc_conn_pool_size`` default to that; values the operator
    set win): a storm's concurrent answers wait for one of them (a publish takes about a
    millisecond) instead of each opening another. Before the transport is made (its pool
    reads the options then). The filter that counts the waits, if any (``count`` 0: the
    pool as oslo.messaging makes it)."""
    if count == 0:
        return None
    names = ('conn_pool_min_size', 'rpc_conn_pool_size')
    for group, opts in messaging_opts.list_opts():
        if group == RABBIT_GROUP:
            conf.register_opts([o for o in opts if o.name in names], group)
    for name in names:
        conf.set_default(name, count, group=RABBIT_GROUP)
    waits = SendWaits()
    logging.getLogger(POOL_LOGGER).addFilter(waits)
    return waits


def open_send_connections(transport, count: int) -> int:
    """Open ``count`` connections of ``transport``'s send pool now (answers and casts draw
    from it; made when a storm of requests needs them, each is a TLS handshake in the event
    loop while the answers wait); how many are open. One attempt each: if the broker is not
    there, they are opened when needed, as without this. The pool is oslo.messaging's own
    (``constraints.txt`` pins the version this was measured with): a version that keeps it
    elsewhere gets a warning and lazy connections."""
    pool = getattr(getattr(transport, '_driver', None), '_connection_pool', None)
    if pool is None or not callable(getattr(pool, 'get', None)):
        LOG.warning('this oslo.messaging has no send pool where expected: its connections '
                    'are opened when first needed')
        return 0
    held = []
    try:
        for _ in range(count):
            held.append(pool.get(retry=0))
    except Exception as exc:        # the broker's or TLS's own errors: logged, not fatal
        LOG.warning('opened %d of %d send connections to the broker: %s', len(held), count,
                    exc)
    finally:
        for conn in held:
            pool.put(conn)
    return len(held)


def lead_own_process_group() -> None:
    """oslo.messaging's queue manager (``use_queue_manager``: reply queues named after the
    node) reads its process group leader's /proc entry whenever it names a queue: a process
    started by a tool that has since exited fails there. A node's process leads its own
    group."""
    if os.getpgrp() != os.getpid():
        os.setpgrp()


def node_vhost(host: str) -> str:
    return NODE_VHOST_PREFIX + host


class NodeTransports:
    """The control plane's way to each node: one transport per node's own virtual host (its
    queues live there, where no other node's broker user reaches), made on first use from
    ``[DEFAULT] transport_url`` (the control user's)."""

    def __init__(self, conf):
        self._conf = conf
        self._base = oslo_messaging.TransportURL.parse(conf, conf.transport_url)
        self._transports: dict[str, object] = {}
        self._lock = threading.Lock()

    def url_for(self, host: str) -> str:
        """The control user's URL with node ``host``'s virtual host."""
        return str(oslo_messaging.TransportURL(self._conf, self._base.transport,
                                               node_vhost(host), self._base.hosts,
                                               self._base.query))

    def for_node(self, host: str):
        with self._lock:
            transport = self._transports.get(host)
            if transport is None:
                transport = get_transport(self._conf, self.url_for(host))
                self._transports[host] = transport
            return transport

    def cleanup(self) -> None:
        with self._lock:
            for transport in self._transports.values():
                transport.cleanup()
            self._transports.clear()


def node_transports(conf):
    """What ``agent.rpc.api.ComputeAPI`` takes: per-node transports (``[DEFAULT]
    node_vhosts``) or the one transport every node shares."""
    return NodeTransports(conf) if conf.node_vhosts else get_transport(conf)
