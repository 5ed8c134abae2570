"""[resources] options: the node's capacity for instances and how usage is audited."""
from oslo_config import cfg

group = cfg.OptGroup('resources', help='Resource accounting: what the node offers to instances.')

opts = [
    cfg.FloatOpt('cpu_allocation_ratio', default=16.0, min=0.0,
                 help='Virtual CPUs offered per physical CPU (host facts: libvirt getInfo).'),
    cfg.FloatOpt('ram_allocation_ratio', default=1.0, min=0.0,
                 help='Memory offered per MiB of host memory (host facts: libvirt all-cells '
                      'memory stats).'),
    cfg.FloatOpt('disk_allocation_ratio', default=1.0, min=0.0,
                 help='Disk offered per GiB the storage backend can give instance disks (LVM: '
                      'VG size minus LVs that are not the agent\'s; file: free space plus the '
                      'agent\'s own disk files). Keep 1.0 for LVM: its LVs are thick.'),
    cfg.IntOpt('reserved_host_cpus', default=0, min=0,
               help='Physical CPUs kept for the host, before the allocation ratio applies.'),
    cfg.IntOpt('reserved_host_memory_mb', default=512, min=0,
               help='MiB of memory kept for the host, before the allocation ratio applies.'),
    cfg.IntOpt('reserved_host_disk_gb', default=0, min=0,
               help='GiB of instance storage kept free, before the allocation ratio applies.'),
    cfg.FloatOpt('audit_interval', default=60.0, min=0.0,
                 help='Seconds between audits that re-derive usage from one libvirt listing and '
                      'one storage listing; a report is sent only when something differs. '
                      '0 disables the periodic audit (start-up and reconnect audits still run).'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
