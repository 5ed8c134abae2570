"""[readiness] options: how long a running guest is expected to take to become ready."""
from oslo_config import cfg

group = cfg.OptGroup('readiness', help='Guest readiness (the guest-agent channel).')

opts = [
    cfg.IntOpt('expect_within', default=300, min=0, max=86400,
               help='Seconds after its domain starts (or its guest closes the agent channel, '
                    'e.g. to reboot) within which a guest is expected to open its agent '
                    'channel (org.qemu.guest_agent.0: qemu-guest-agent, or anything in the '
                    'guest that opens the port). Past it the instance shows readiness '
                    '"late": still active, not an error; it becomes "ready" whenever the '
                    'guest connects. 0: never late.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
