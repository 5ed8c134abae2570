"""[upgrade_levels] options: the RPC versions clients send during a rolling upgrade."""
from oslo_config import cfg

group = cfg.OptGroup('upgrade_levels', help='Version caps for a rolling upgrade (as nova has '
                                            'them): while some services still run older code, '
                                            'their clients send at most these versions. '
                                            'Order: conductor first, then the agents, then the '
                                            'control plane; raise the caps last (docs/'
                                            'operations.md).')

opts = [
    cfg.StrOpt('compute',
               help='The highest compute-agent RPC version the control plane (compute-ctl) '
                    'sends, MAJOR.MINOR (for example 1.7 while some nodes run an agent of '
                    'that version). Unset: the newest this code knows. A call or boot-spec '
                    'field of a later version is refused with VersionCapped.'),
    cfg.StrOpt('conductor',
               help='The highest conductor report version the agent sends, MAJOR.MINOR (for '
                    'example 2.0 while the conductor still runs 2.0). Unset: the newest this '
                    'code knows. Report fields of later versions are left out.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
