"""The reference conductor's service: its two RPC servers (reports; control), its store,
pruning. Native threads, no eventlet. Only the conductor imports this (and, through
``agent.conductor.db``, SQLAlchemy and Alembic): the compute agent never does.
"""
import logging
import signal
import threading
import time

import oslo_messaging

from agent import rpc
from agent.conductor import db as conductor_db
from agent.conductor import keys as conductor_keys
from agent.conductor import manager as conductor_manager
from agent.rpc import drain as rpc_drain

LOG = logging.getLogger(__name__)

PRUNE_INTERVAL = 300.0     # seconds between prunings of old records and rows


class ConductorService:
    """The reference conductor: stores agents' reports; native threads, no eventlet. One
    process per worker (``agent.conductor.workers``), each with its own store connections
    and its own RPC server name on the shared topic."""

    def __init__(self, conf, worker: int | None = None):
        self.conf = conf
        self.store = conductor_db.InstanceStore(
            conf.conductor.database, conf.conductor.db_pool_size,
            conf.conductor.wait_poll_interval if conf.conductor.workers > 1 else None)
        self.transport = rpc.get_transport(conf)
        self.name = conf.host if worker is None else '%s-w%d' % (conf.host, worker)
        c = conf.conductor
        # Two servers, two topics: nodes may publish reports only; a flood of waits on the
        # control topic cannot take the threads that reports need.
        self.servers = [
            oslo_messaging.get_rpc_server(
                self.transport, oslo_messaging.Target(topic=c.topic, server=self.name),
                [conductor_manager.ReportEndpoint(
                    self.store, conductor_keys.NodeKeys(c.node_keys_dir),
                    c.debug_report_delay, c.max_future_seconds, c.max_instances_per_node)],
                executor='threading'),
            oslo_messaging.get_rpc_server(
                self.transport, oslo_messaging.Target(
                    topic=conductor_manager.control_topic(c.topic), server=self.name),
                [conductor_manager.ControlEndpoint(self.store, c.max_waits)],
                executor='threading')]
        self._stop = threading.Event()
        self.worker = worker

    def _prune(self) -> None:
        c = self.conf.conductor
        for what, prune, retention in (
                ('report records', self.store.prune_reports, c.reports_retention),
                ('rows of deleted instances', self.store.prune_deleted, c.deleted_retention)):
            if retention <= 0:
                continue
            try:
                gone = prune(time.time() - retention)
            except Exception:
                LOG.exception('pruning %s failed; trying again later', what)
                continue
            if gone:
                LOG.info('pruned %d %s older than %.0f s', gone, what, retention)

    def start(self) -> None:
        """Start the RPC server (the store is open and migrated)."""
        for server in self.servers:
            server.start()
        LOG.info('compute-conductor %s serving topics %s and %s, %s database at revision %s',
                 self.name, self.conf.conductor.topic,
                 conductor_manager.control_topic(self.conf.conductor.topic),
                 self.store.dialect, self.store.revision)

    @staticmethod
    def _stop_server(server) -> None:
        server.stop()
        rpc_drain.leave_unacked(server)             # later deliveries go back to the queue
        server.wait()

    def wait(self) -> None:
        """Block until told to stop, then stop. The first worker prunes old report
        records now and then."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: self._stop.set())
        prunes = self.worker in (None, 0)
        next_prune = time.monotonic()
        while not self._stop.wait(1.0):
            if prunes and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                self._prune()
        # Side by side: each listener notices the stop only when its poll returns (up to
        # 5 s when idle), so one after the other doubles the time a restart takes.
        stoppers = [threading.Thread(target=self._stop_server, args=(server,))
                    for server in self.servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
        self.transport.cleanup()
        self.store.close()
