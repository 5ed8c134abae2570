"""[DEFAULT] options: node identity, messaging, paths and instance limits."""
import socket

from oslo_config import cfg

RUNTIMES = ('eventlet', 'threading')

runtime_opt = cfg.StrOpt(
    'runtime', default='eventlet', choices=RUNTIMES,
    help='(compute-agent) How the agent runs concurrent work. eventlet: greenthreads, '
         'eventlet\'s tpool as the work queue, oslo.messaging\'s eventlet executor (the '
         'default, as this project chose). threading: no monkey-patching, native threads, '
         'oslo.messaging\'s threading executor. Read once at start, before anything else '
         'loads; a change needs a restart. Both are tested (docs/testing.md) and benchmarked '
         '(docs/benchmarks.md).')

opts = [
    runtime_opt,
    cfg.HostAddressOpt(
        'host', default=socket.gethostname(), sample_default='<node hostname>',
        help='Name of this node: the RPC server name agents listen on (topic "compute") and the '
             'key under which the conductor stores this node\'s instances.'),
    cfg.StrOpt(
        'image_dir', default='/var/lib/compute-agent/images',
        help='Directory holding the images, kernels and initrds a boot spec may name. A spec can only '
             'refer to plain file names inside this directory.'),
    cfg.StrOpt(
        'instances_path', default='/var/lib/compute-agent/instances',
        help='Directory where per-instance files (serial console log) are kept, one sub-directory '
             'per instance uuid.'),
    cfg.BoolOpt(
        'node_vhosts', default=True,
        help='(control clients: compute-ctl, tools) Each node\'s queues are in its own broker '
             'virtual host, node-NAME (tools/setup-node.sh --node NAME), reached with the '
             'transport_url\'s credentials and host. False: every node in transport_url\'s.'),
    cfg.IntOpt('max_vcpus_per_instance', default=64, min=1, max=4096,
               help='Largest vcpus value a boot spec may ask for.'),
    cfg.IntOpt('max_memory_mb_per_instance', default=1024 * 1024, min=16,
               help='Largest memory_mb value a boot spec may ask for.'),
    cfg.IntOpt('min_memory_mb_per_instance', default=16, min=1,
               help='Smallest memory_mb value a boot spec may ask for.'),
    cfg.IntOpt('max_nics_per_instance', default=8, min=0, max=64,
               help='Most NICs one instance may have.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_opts(opts)


def list_opts():
    return {'DEFAULT': opts}
