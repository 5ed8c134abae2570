"""[network] options: which networks a boot spec may put a guest on."""
from oslo_config import cfg

group = cfg.OptGroup('network', help='Guest networking a boot spec may ask for.')

opts = [
    cfg.BoolOpt('allow_user_nics', default=False,
                help='Allow {"type": "user"} NICs (QEMU user-mode networking). They are always '
                     'isolated (slirp "restrict=on"): the guest reaches neither the host (whose '
                     '127.0.0.1 slirp would otherwise expose as 10.0.2.2: the broker, the '
                     'metrics port) nor any other network; DHCP inside the guest still works. '
                     'Off: a spec with a user NIC is refused.'),
    cfg.ListOpt('bridges', default=[],
                help='Linux bridges a boot spec may attach a NIC to. Empty: no bridge NICs. A '
                     'bridge must be listed here and exist on the node; management bridges '
                     'must never be listed.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
