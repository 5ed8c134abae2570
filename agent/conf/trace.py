"""[trace] options: Chrome trace-event recording of boots and deletes."""
from oslo_config import cfg

group = cfg.OptGroup('trace', help='Chrome trace-event JSON (Perfetto, chrome://tracing): one '
                                   'track per instance with its request, claim, journal wait, '
                                   'work-queue waits, libvirt calls, storage commands and '
                                   'conductor reports.')

opts = [
    cfg.StrOpt('path',
               help='Record trace events and write them to this file when the agent stops and '
                    'on the write_trace RPC (compute-ctl trace). Unset: no recording.'),
    cfg.IntOpt('max_events', default=1000000, min=1000,
               help='Events kept in memory (about 250 bytes each); later ones are counted as '
                    'dropped.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
