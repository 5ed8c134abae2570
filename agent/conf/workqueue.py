"""[workqueue] options: the global native-thread work queue."""
from oslo_config import cfg

group = cfg.OptGroup('workqueue', help='The one global native-thread queue that runs every '
                                       'blocking libvirt call.')

opts = [
    cfg.IntOpt('threads', default=8, min=1, max=256,
               help='Native threads drawing from the one shared queue. libvirtd serves at most '
                    'max_client_requests (default 5) calls per connection at once.'),
    cfg.IntOpt('stats_samples', default=2048, min=16,
               help='Recent samples kept per operation for the queue-wait and run-time percentiles.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
