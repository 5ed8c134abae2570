"""The control plane's way to nodes: each node's own virtual host, and a client per node."""
import oslo_messaging
from oslo_config import cfg

from agent import rpc
from agent.rpc import api as compute_api


def _conf(url: str) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    oslo_messaging.get_rpc_transport(conf, url='fake:/').cleanup()   # registers its options
    conf([], default_config_files=[])
    conf.set_override('transport_url', url)
    return conf


def test_each_node_is_reached_in_its_own_virtual_host():
    conf = _conf('rabbit://control:secret@broker.example.org:5671/')
    nodes = rpc.NodeTransports(conf)
    for host in ('n1', 'compute-7.rack2'):
        url = oslo_messaging.TransportURL.parse(conf, nodes.url_for(host))
        assert url.virtual_host == 'node-' + host
        assert [(h.hostname, h.port, h.username, h.password) for h in url.hosts] == [
            ('broker.example.org', 5671, 'control', 'secret')]


class Routes:
    """What ComputeAPI asks of a NodeTransports: one transport per node (fake driver here)."""

    def __init__(self):
        self.asked: list[str] = []
        self.conf = cfg.ConfigOpts()
        self.transports: dict = {}

    def for_node(self, host: str):
        self.asked.append(host)
        return self.transports.setdefault(
            host, oslo_messaging.get_rpc_transport(self.conf, url='fake:/'))


def test_the_compute_client_talks_to_each_node_over_that_nodes_transport():
    routes = Routes()
    api = compute_api.ComputeAPI(routes, timeout=1)
    first = api._client_for('n1')
    assert api._client_for('n1') is first            # made once
    api._client_for('n2')
    assert routes.asked == ['n1', 'n2']
    assert first.transport is routes.transports['n1']
    for t in routes.transports.values():
        t.cleanup()


def test_a_process_whose_group_leader_exited_leads_its_own_group():
    """oslo.messaging's queue manager reads /proc/<process group>/stat whenever it names a
    reply queue: a process started by a tool that has exited must lead its own group."""
    import json
    import os
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    leader = os.fork()
    if leader == 0:                                  # a tool: leads a group, starts a child
        os.setpgrp()
        if os.fork() == 0:
            os.read(go_r, 1)                         # until the leader exited and was reaped
            before = os.path.exists('/proc/%d/stat' % os.getpgrp())
            rpc.lead_own_process_group()
            after = os.path.exists('/proc/%d/stat' % os.getpgrp())
            os.write(w, json.dumps([before, after, os.getpgrp() == os.getpid()]).encode())
            os._exit(0)
        os._exit(0)
    os.close(w)
    os.waitpid(leader, 0)
    os.write(go_w, b'g')
    with os.fdopen(r) as f:
        assert json.loads(f.read()) == [False, True, True]
    os.close(go_r)
    os.close(go_w)
