"""[workqueue] options: the global native-thread work queue."""
from oslo_config import cfg

group = cfg.OptGroup('workqueue', help='The one global native-thread queue that runs every '
                                       'blocking libvirt call.')

opts = [
    cfg.IntOpt('threads', default=64, min=1, max=256,
               help='Native threads drawing from the one shared queue. A domain start holds its '
                    'thread for seconds under load, so there must be more threads than starts '
                    'in progress, or short calls (journal commits, storage commands) wait '
                    'behind them. An idle thread costs nothing but its stack. libvirtd serves '
                    'at most max_client_requests calls per connection at once (default 5; '
                    'tools/setup-node.sh sets 64).'),
    cfg.IntOpt('reserved_threads', default=2, min=0,
               help='Threads kept for the job journal\'s commits: libvirt calls and storage '
                    'commands may occupy all the others, so boot requests are answered (their '
                    'job on disk) even while every other thread holds a domain start.'),
    cfg.IntOpt('stats_samples', default=2048, min=16,
               help='Recent samples kept per operation for the queue-wait and run-time percentiles.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
