"""[warm] and [warm_pool:NAME] options: pools of saved, already-booted spares (warm boots).

``[warm] pools`` names the pools; each has its own group ``[warm_pool:NAME]`` with its flavor
and size, registered once the names are known (``register_pool_opts``).
"""
from oslo_config import cfg

group = cfg.OptGroup('warm', help='Warm boots: instances restored from saved, already-booted '
                                  'spares instead of booting cold.')

POOL_GROUP_PREFIX = 'warm_pool:'

opts = [
    cfg.ListOpt('pools', default=[],
                help='Names of the warm pools this node keeps (letters, digits, ".", "_", '
                     '"-"). Each one is configured in its own group [warm_pool:NAME]. '
                     'Empty: no spares are made, a boot naming a pool is refused.'),
    cfg.IntOpt('max_disk_gb', default=0, min=0,
               help='GiB of disk that saved spares may hold in all (their root disks; their '
                    'memory images live in the instances directory too). Reserved node '
                    'capacity: reported as usage and never given to instances. 0: no cap '
                    'beyond the node\'s capacity.'),
    cfg.FloatOpt('quiet_seconds', default=2.0, min=0.0, max=3600.0,
                 help='Spares are made only while no boot or delete job runs, and only after '
                      'none has run for this many seconds (spare making never slows a '
                      'storm).'),
    cfg.IntOpt('ready_timeout', default=300, min=10, max=3600,
               help='Seconds a spare being made may take to become ready (its guest opens '
                    'the agent channel) before it is given up and removed.'),
    cfg.FloatOpt('settle_seconds', default=2.0, min=0.0, max=600.0,
                 help='Seconds a spare runs on after its guest became ready before it is '
                      'saved: the burst of work a guest does right after boot is done by '
                      'then, so restored guests resume quiet (restores of many at once '
                      'compete less for the CPUs).'),
    cfg.FloatOpt('retry_interval', default=30.0, min=1.0, max=3600.0,
                 help='Seconds to wait before trying again after making a spare failed.'),
    cfg.IntOpt('max_spare_age', default=86400, min=60, max=30 * 86400,
               help='Seconds a saved spare may be handed out after it was saved; older ones '
                    'are retired (removed, then made anew while the node is quiet). A spare '
                    'is retired too when its pool\'s flavor changed or a file it booted from '
                    '(kernel, initrd, image: device, inode, size, mtime) is no longer the '
                    'one there; checked at start-up and at every take.'),
]

pool_opts = [
    cfg.IntOpt('size', default=1, min=0, max=256,
               help='How many saved spares to keep (memory images on disk).'),
    cfg.IntOpt('hot', default=0, min=0, max=256,
               help='How many hot spares to keep: booted, ready, paused in memory, their '
                    'memory reserved (never more than the node has: a hot spare is not made '
                    'when it does not fit without overcommit). A boot naming the pool takes a '
                    'hot spare first (one resume), a saved one next, and boots cold last. '
                    'identity = port pools only.'),
    cfg.IntOpt('vcpus', default=1, min=1, help='vCPUs of the flavor.'),
    cfg.IntOpt('memory_mb', default=128, min=16, help='Memory of the flavor, MiB.'),
    cfg.StrOpt('kernel', help='Kernel file name in [DEFAULT] image_dir.'),
    cfg.StrOpt('initrd', help='Initrd file name in [DEFAULT] image_dir.'),
    cfg.StrOpt('cmdline', help='Kernel command line.'),
    cfg.StrOpt('image', help='Disk image file name in [DEFAULT] image_dir.'),
    cfg.IntOpt('disk_gb', default=1, min=1,
               help='Root disk of each spare, GiB (a spare always has its own disk: the '
                    'instance that takes the spare takes it).'),
    cfg.StrOpt('identity', default='port', choices=[
        ('port', 'the guest reads its identity from the agent\'s identity port (the test '
                 'guest); a spec naming the pool takes no seed fields'),
        ('cloud-init', 'a cloud image with qemu-guest-agent and cloud-init: each spare boots '
                       'with a seed of its own; a restore swaps in the instance\'s seed, sets '
                       'the guest\'s clock and runs cloud-init on it through the guest agent '
                       'before the instance is ready')],
               help='How a restored guest becomes the instance.'),
    cfg.IntOpt('identity_timeout', default=300, min=5, max=3600,
               help='identity = cloud-init: seconds the guest may take to apply the '
                    'instance\'s seed; past that the restored guest is removed and the '
                    'instance booted cold.'),
    cfg.IntOpt('user_nics', default=0, min=0, max=8,
               help='Isolated user-mode NICs of the flavor (needs [network] '
                    'allow_user_nics); each spare has its own MACs, which the instance '
                    'keeps.'),
]


def pool_group(name: str) -> str:
    """The option group of pool ``name``."""
    return POOL_GROUP_PREFIX + name


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def register_pool_opts(conf: cfg.ConfigOpts) -> None:
    """Register [warm_pool:NAME] for every name in [warm] pools (after parsing)."""
    for name in conf.warm.pools:
        conf.register_opts(pool_opts, group=pool_group(name))


def list_opts():
    return {group: opts, cfg.OptGroup(pool_group('NAME'), help='One warm pool (one per name '
                                      'in [warm] pools).'): pool_opts}
