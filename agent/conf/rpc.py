"""[rpc] options: the agent's connections to the broker."""
from oslo_config import cfg

group = cfg.OptGroup('rpc', help='The agent\'s connections to the broker.')

opts = [
    cfg.IntOpt('send_connections', default=8, min=0, max=64,
               help='Broker connections the agent sends on (its answers and reports): '
                    'opened as it starts, kept open while idle, and no more are opened '
                    '(oslo.messaging\'s [oslo_messaging_rabbit] conn_pool_min_size and '
                    'rpc_conn_pool_size default to this). A storm\'s concurrent answers wait '
                    'for one of them (a publish takes about a millisecond; get_stats counts '
                    'the waits) instead of each opening another: a TLS handshake in the '
                    'agent\'s event loop while every answer waits (about 50 ms measured '
                    'here), and a broker connection more per node. 0: oslo.messaging\'s own '
                    'pool, opened as needed.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
