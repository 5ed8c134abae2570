"""[jobs] options: the durable job journal and what happens to interrupted jobs."""
from oslo_config import cfg

group = cfg.OptGroup('jobs', help='Boot and delete jobs and their journal on this node.')

opts = [
    cfg.StrOpt('journal', default='/var/lib/compute-agent/jobs.sqlite',
               help='SQLite file (WAL mode) recording every job. Job changes are committed in '
                    'groups: one transaction and one fsync for all changes made meanwhile. '
                    'boot_instance and delete_instance answer once their job is on disk.'),
    cfg.FloatOpt('retention', default=3600.0, min=0.0,
                 help='Seconds a finished job stays in the journal (and answers get_job).'),
    cfg.IntOpt('max_boot_attempts', default=2, min=1,
               help='A boot interrupted by an agent restart runs again from the start (after '
                    'whatever it made is removed) until it has run this many times; then it '
                    'fails with the reason.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
