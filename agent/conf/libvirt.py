"""[libvirt] options: connection and guest XML choices."""
from oslo_config import cfg

group = cfg.OptGroup('libvirt', help='How the agent drives libvirt.')

opts = [
    cfg.StrOpt('connection_uri', default='qemu:///system',
               help='libvirt connection URI.'),
    cfg.StrOpt('virt_type', default='kvm', choices=['kvm', 'qemu', 'test'],
               help='Domain type: "kvm" for hardware virtualisation, "qemu" for TCG emulation '
                    '(for hosts where KVM does not work, such as nested test machines), '
                    '"test" for libvirt\'s test driver (connection_uri = test:///default '
                    'in the agent\'s process, or test+unix:///default in libvirtd): no VM '
                    'runs; for benchmarks of the agent itself.'),
    cfg.StrOpt('cpu_mode', default='none', choices=['none', 'host-model', 'host-passthrough'],
               help='Guest CPU model mode; "none" leaves it to the hypervisor default.'),
    cfg.IntOpt('tcg_tb_cache_mb', default=16, min=0,
               help='With virt_type=qemu, size of the TCG translation cache per guest in MiB '
                    '(0 keeps QEMU\'s default). 16 MiB saves ~35 MiB of RSS per guest.'),
    cfg.IntOpt('keepalive_interval', default=5, min=0,
               help='Seconds between keepalive probes on the libvirt connection (0 disables), so '
                    'a dead libvirtd is noticed even when the agent is idle.'),
    cfg.IntOpt('keepalive_count', default=3, min=1,
               help='Unanswered keepalive probes before the connection is considered dead.'),
    cfg.FloatOpt('reconnect_interval', default=1.0, min=0.05,
                 help='Seconds between attempts to reconnect to libvirtd after it went away.'),
    cfg.StrOpt('qemu_group', default='libvirt-qemu',
               help='The group QEMU runs as (qemu.conf "group"; Debian\'s is libvirt-qemu). '
                    'Instance directories are root\'s with this group, mode 0710, so QEMU can '
                    'open the disk that libvirt chowns to it, while no other user can enter. '
                    'Empty: the directories are root\'s alone (0700), for QEMU running as '
                    'root.'),
    cfg.StrOpt('identity_socket_dir', default='/run/compute-agent/identity',
               help='Where the host sides of the identity ports of warm-pool instances live '
                    '(one unix socket per instance, <uuid>.sock; a unix socket path is at '
                    'most 107 bytes, so this is kept short rather than under '
                    'instances_path).'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
