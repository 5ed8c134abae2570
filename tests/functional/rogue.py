"""A rogue node's process: node B's real credentials (its broker user and report key), trying
what a compromised node would against node A. Run by ``test_rogue_node.py``:

    python -m tests.functional.rogue CREDS A_HOST A_TOPIC A_UUID CAP

It prints one JSON object: attempt -> outcome (``refused: ...``, or what happened).
"""
import json
import ssl
import sys
import threading
import time
import uuid as uuidlib

import amqp
import oslo_messaging

from agent import conf as agent_conf
from agent import exception
from agent import rpc
from agent import signing
from agent.conductor import api as conductor_api
from agent.conductor import manager as conductor_manager

CA = '/etc/compute-agent/tls/ca.pem'


def _raw(url: str, vhost: str) -> amqp.Connection:
    """A plain AMQP connection with the URL's user to ``vhost``."""
    parsed = oslo_messaging.TransportURL.parse(agent_conf.CONF, url)
    host = parsed.hosts[0]
    conn = amqp.Connection('127.0.0.1:%d' % host.port, userid=host.username,
                           password=host.password, virtual_host=vhost,
                           ssl={'ca_certs': CA, 'server_hostname': 'localhost',
                                'cert_reqs': ssl.CERT_REQUIRED}, connect_timeout=10)
    conn.connect()
    return conn


def _outcome(fn) -> str:
    try:
        result = fn()
    except (amqp.exceptions.AccessRefused, amqp.exceptions.NotAllowed) as exc:
        return 'refused: %s' % str(exc).splitlines()[0][:160]
    except oslo_messaging.MessageDeliveryFailure as exc:
        return 'refused: %s' % str(exc).splitlines()[0][:160] if 'ACCESS_REFUSED' in str(
            exc) else 'failed: %s' % exc
    except exception.AgentError as exc:
        return 'refused: %s: %s' % (type(exc).__name__, str(exc).splitlines()[0])
    except Exception as exc:                 # anything else: said, the test decides
        return 'error: %s: %s' % (type(exc).__name__, str(exc)[:200])
    return 'done: %r' % (result,)


def _on_channel(url: str, vhost: str, action):
    def run():
        conn = _raw(url, vhost)
        try:
            return action(conn.channel())
        finally:
            try:
                conn.close()
            except Exception:
                pass
    return run


def _serve_as(transport, host: str):
    """An RPC server on node ``host``'s target; its answer to a ping would be 'rogue'."""
    class Endpoint:
        target = oslo_messaging.Target(version='1.8')

        def ping(self, ctxt):
            return 'rogue'
    server = oslo_messaging.get_rpc_server(
        transport, oslo_messaging.Target(topic='compute', server=host), [Endpoint()],
        executor='threading')
    failed = []

    def start():
        try:
            server.start()
        except Exception as exc:
            failed.append(exc)
    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(30)
    if failed:
        raise failed[0]
    return 'serving' if not thread.is_alive() else 'still starting'


def main(creds: str, a_host: str, a_topic: str, a_uuid: str, cap: int) -> dict:
    rpc.lead_own_process_group()          # as the agent does (use_queue_manager)
    agent_conf.CONF(['--config-file', creds], project='compute-agent-rogue',
                    default_config_files=[])
    own = rpc.get_transport(agent_conf.CONF)             # registers the driver's options
    own_url = agent_conf.CONF.transport_url
    fleet_url = agent_conf.CONF.conductor.transport_url
    fleet = rpc.get_transport(agent_conf.CONF, fleet_url)
    me = agent_conf.CONF.oslo_messaging_rabbit.hostname
    key = signing.parse_key(agent_conf.CONF.conductor.report_key)
    a_vhost = rpc.node_vhost(a_host)
    out = {}
    now = time.time_ns()
    row = {'uuid': a_uuid, 'seq': now, 'vm_state': 'deleted', 'accepted_at': 1.0}

    # -- A's compute queue: serve, consume, purge, delete, command -------------------------
    out['serve A in own vhost'] = _outcome(lambda: _serve_as(own, a_host))
    out['open A vhost'] = _outcome(_on_channel(own_url, a_vhost, lambda ch: None))
    q = 'compute.' + a_host
    out['consume A queue'] = _outcome(_on_channel(
        own_url, a_vhost, lambda ch: ch.basic_consume(q, callback=lambda m: None)))
    out['purge A queue'] = _outcome(_on_channel(own_url, a_vhost, lambda ch: ch.queue_purge(q)))
    out['delete A queue'] = _outcome(_on_channel(own_url, a_vhost,
                                                 lambda ch: ch.queue_delete(q)))
    out['publish to A queue via the fleet default exchange'] = _outcome(_on_channel(
        fleet_url, '/', lambda ch: (ch.basic_publish(amqp.Message('{}'), '', q),
                                    ch.queue_declare(q, passive=True))))
    out['delete the fleet report exchange'] = _outcome(_on_channel(
        fleet_url, '/', lambda ch: ch.exchange_delete('amq.topic')))
    out['consume the conductor report queue'] = _outcome(_on_channel(
        fleet_url, '/', lambda ch: ch.basic_consume(a_topic, callback=lambda m: None)))
    out['purge the conductor report queue'] = _outcome(_on_channel(
        fleet_url, '/', lambda ch: ch.queue_purge(a_topic)))

    # -- reports ---------------------------------------------------------------------------
    signed_as_me = conductor_api.ReportAPI(fleet, a_topic, key, timeout=15)
    unsigned = conductor_api.ReportAPI(fleet, a_topic, None, timeout=15)
    out['report as A signed with own key'] = _outcome(
        lambda: signed_as_me.report(a_host, [dict(row, host=a_host)], None))
    out['report as A unsigned'] = _outcome(
        lambda: unsigned.report(a_host, [dict(row, host=a_host)], None))
    out['future seq for A'] = _outcome(lambda: signed_as_me.report(
        a_host, [dict(row, host=a_host, seq=now + 23 * 3600 * 10 ** 9)], None))
    out['squat A uuid'] = _outcome(lambda: signed_as_me.report(me, [row], None))
    out['own future seq beyond minutes'] = _outcome(lambda: signed_as_me.report(
        me, [{'uuid': str(uuidlib.uuid4()), 'seq': now + 3600 * 10 ** 9,
              'vm_state': 'active', 'accepted_at': 1.0}], None))
    flood = [{'uuid': str(uuidlib.uuid4()), 'seq': now, 'vm_state': 'active',
              'accepted_at': 1.0} for _ in range(cap + 10)]
    out['flood rows'] = _outcome(lambda: signed_as_me.report(me, flood, None))

    # -- the conductor's control methods ---------------------------------------------------
    control = conductor_api.ConductorAPI(fleet, a_topic, timeout=15)
    out['list rows'] = _outcome(lambda: control.list_instances(a_host))
    out['wait'] = _outcome(lambda: control.wait_instances([a_uuid], ['deleted'], 60))
    out['forget A row'] = _outcome(lambda: control.forget_instance(a_uuid))
    out['control queue via the default exchange'] = _outcome(_on_channel(
        fleet_url, '/', lambda ch: (ch.basic_publish(
            amqp.Message('{}'), '', conductor_manager.control_topic(a_topic)),
            ch.queue_declare(a_topic, passive=True))))
    own.cleanup()
    fleet.cleanup()
    return out


if __name__ == '__main__':
    print(json.dumps(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4],
                          int(sys.argv[5]))))
