"""[metrics] options: the agent's Prometheus endpoint."""
from oslo_config import cfg

group = cfg.OptGroup('metrics', help='Prometheus metrics of the agent (GET /metrics).')

opts = [
    cfg.HostAddressOpt('listen_address', default='127.0.0.1',
                       help='Address the metrics endpoint listens on. Loopback by default: '
                            'scrape it through a local collector, or set an address of the '
                            'management network (never one guests can reach).'),
    cfg.PortOpt('port', default=9781,
                help='Port of the metrics endpoint; 0 turns it off. If the port cannot be '
                     'bound the agent logs an error and runs without it.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
