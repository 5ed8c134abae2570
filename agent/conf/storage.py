"""[storage] and [lvm] options: where instance root disks live."""
from oslo_config import cfg

storage_group = cfg.OptGroup('storage', help='Instance root disks.')
lvm_group = cfg.OptGroup('lvm', help='The LVM storage backend.')

storage_opts = [
    cfg.StrOpt('backend', default='lvm', choices=['lvm', 'file'],
               help='Where root disks of instances with disk_gb > 0 live: "lvm" (an LV per '
                    'instance in [lvm] volume_group) or "file" (a qcow2 overlay per instance '
                    'in [DEFAULT] instances_path).'),
    cfg.IntOpt('max_disk_gb_per_instance', default=4096, min=1,
               help='Largest disk_gb a boot spec may ask for.'),
    cfg.IntOpt('command_timeout', default=600, min=1,
               help='Seconds one storage command (lvcreate, lvremove, lvs, qemu-img) may run; '
                    'past that it is killed and its job fails naming the command.'),
    cfg.StrOpt('wipe', default='zero', choices=['zero', 'none'],
               help='LVM backend: what happens to an LV\'s blocks before it is removed. '
                    '"zero" (blkdiscard --zeroout: the device zeroes them, offloaded where it '
                    'can) keeps one tenant\'s data from the next tenant whose LV gets the same '
                    'extents; "none" only where the node wipes otherwise (encrypted or thin '
                    'volumes).'),
    cfg.IntOpt('file_reserved_mb', default=1024, min=0,
               help='File backend: MiB of the instances filesystem that instance disks may '
                    'never take, so the job journal, console logs and the agent itself still '
                    'find room (keep the journal on that filesystem or set [jobs] journal '
                    'elsewhere).'),
]

lvm_opts = [
    cfg.StrOpt('volume_group', default='compute-agent-vg',
               help='Volume group holding the instances\' LVs.'),
    cfg.StrOpt('lvm_system_dir',
               help='LVM_SYSTEM_DIR for every LVM command (a private lvm.conf); unset uses the '
                    'system configuration. tools/setup-node.sh writes /etc/compute-agent/lvm.'),
    cfg.FloatOpt('report_cache_seconds', default=2.0, min=0.0,
                 help='How long one lvs/vgs sweep answers questions about LVs and capacity. '
                      'The agent\'s own creates and removes invalidate it at once; this bounds '
                      'how late changes made by others are seen.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(storage_group)
    conf.register_opts(storage_opts, group=storage_group)
    conf.register_group(lvm_group)
    conf.register_opts(lvm_opts, group=lvm_group)


def list_opts():
    return {storage_group: storage_opts, lvm_group: lvm_opts}
