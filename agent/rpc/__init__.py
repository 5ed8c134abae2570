"""RPC plumbing shared by the agent, the conductor and the CLI."""
import os
import threading

import oslo_messaging

EXMODS = ['agent.exception']   # exceptions clients re-raise as the same class
NODE_VHOST_PREFIX = 'node-'    # node NAME's own virtual host (tools/setup-node.sh --node)


def get_transport(conf, url: str | None = None):
    return oslo_messaging.get_rpc_transport(conf, url=url, allowed_remote_exmods=EXMODS)


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
