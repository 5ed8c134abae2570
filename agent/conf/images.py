"""[images] options: images a boot spec names by URL (``image_ref``), downloaded once per
node into a read-only cache."""
from oslo_config import cfg

group = cfg.OptGroup('images', help='The image cache: images a boot spec names by URL, '
                                    'sha256 and size (image_ref).')

opts = [
    cfg.ListOpt('sources', default=[],
                help='URL prefixes this node downloads images from, each ending in "/" (for '
                     'example https://images.example.com/ or file:///srv/images/). An '
                     'image_ref must start with one of them: scheme, host and port equal, '
                     'its path below the prefix\'s. Redirects are not followed. Empty: '
                     'image_ref is refused.'),
    cfg.StrOpt('cache_dir', default='/var/lib/compute-agent/image-cache',
               help='Where downloaded images live, named by their sha256, read-only '
                    '(root\'s, QEMU\'s group). The agent\'s alone: partial downloads left by '
                    'a crash are removed at start.'),
    cfg.FloatOpt('cache_max_gb', default=50.0, min=0.001,
                 help='GiB the cache may hold. Images no instance uses are evicted, least '
                      'recently used first, to make room for a new one; an image in use is '
                      'never evicted (a boot that would need it is refused instead).'),
    cfg.FloatOpt('max_image_gb', default=20.0, min=0.001,
                 help='Largest image (its declared size, in GiB) a spec may name.'),
    cfg.IntOpt('max_downloads', default=2, min=1, max=16,
               help='Downloads of different images at once (each holds one work-queue '
                    'thread); boots of an image being downloaded wait for that download.'),
    cfg.IntOpt('stall_timeout', default=60, min=1, max=3600,
               help='Seconds a download may receive nothing before it is given up.'),
    cfg.IntOpt('download_timeout', default=3600, min=1, max=86400,
               help='Seconds one download may take in all.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
