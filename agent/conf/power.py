"""[power] options: how stop and reboot treat a guest that does not react at once."""
from oslo_config import cfg

group = cfg.OptGroup('power', help='Stopping and rebooting instances.')

opts = [
    cfg.IntOpt('stop_timeout', default=60, min=0, max=3600,
               help='Seconds stop_instance waits, when the request names no timeout, for the '
                    'guest to power itself off after the ACPI power button; then the domain '
                    'is stopped at once (destroyed, its definition and disks kept). 0: stop '
                    'at once.'),
    cfg.IntOpt('max_stop_timeout', default=600, min=0, max=86400,
               help='The largest timeout a stop_instance request may ask for.'),
    cfg.IntOpt('acpi_retry_interval', default=10, min=1, max=3600,
               help='Seconds between ACPI power-button presses while a graceful stop or soft '
                    'reboot waits: a guest still booting misses a press (one libvirt RPC '
                    'each).'),
    cfg.IntOpt('reboot_timeout', default=60, min=1, max=3600,
               help='Seconds a soft reboot waits for the guest to reset after the ACPI power '
                    'button; then it is reset at once (a hard reboot), and the job says so.'),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(group)
    conf.register_opts(opts, group=group)


def list_opts():
    return {group: opts}
