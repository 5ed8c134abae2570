"""Service wiring: starts the RPC server, the event bridge and the report loop; stops them.

No business logic here. ``[DEFAULT] runtime`` picks the concurrency: eventlet (greenthreads)
or threading (native threads); only ``agent.workqueue`` and the entry point import eventlet.
"""
import grp
import logging
import os
import signal
import threading
import time

import oslo_messaging

from agent import exception
from agent import imageref
from agent import instancedir
from agent import journal as journalmod
from agent.compute import manager as managermod
from agent.compute import power as powermod
from agent import metrics as metricsmod
from agent import reporter as reportermod
from agent import resources
from agent import rpc
from agent import signing
from agent import spec as specmod
from agent import trace as tracemod
from agent import workqueue
from agent.conductor import api as conductor_api
from agent.rpc import drain as rpc_drain
from agent.rpc import server as rpc_server
from agent.storage import commands
from agent.storage import file as file_storage
from agent.storage import imagecache
from agent.storage import lvm as lvm_storage
from agent.storage import operations
from agent.storage import seeds as seedsmod
from agent.virt.libvirt import driver as libvirt_driver
from agent.warm import pools as poolsmod

LOG = logging.getLogger(__name__)


def _bridge_exists(name: str) -> bool:
    return os.path.isdir('/sys/class/net/%s/bridge' % name)


def limits_from_conf(conf) -> specmod.Limits:
    return specmod.Limits(image_dir=conf.image_dir, max_vcpus=conf.max_vcpus_per_instance,
                          min_memory_mb=conf.min_memory_mb_per_instance,
                          max_memory_mb=conf.max_memory_mb_per_instance,
                          max_nics=conf.max_nics_per_instance,
                          max_disk_gb=conf.storage.max_disk_gb_per_instance,
                          bridge_exists=_bridge_exists,
                          allow_user_nics=conf.network.allow_user_nics,
                          bridges=frozenset(conf.network.bridges),
                          image_sources=tuple(conf.images.sources),
                          max_image_bytes=int(conf.images.max_image_gb * 1024 ** 3))


def allocation_from_conf(conf) -> resources.Allocation:
    r = conf.resources
    return resources.Allocation(
        cpu_ratio=r.cpu_allocation_ratio, ram_ratio=r.ram_allocation_ratio,
        disk_ratio=r.disk_allocation_ratio, reserved_cpus=r.reserved_host_cpus,
        reserved_memory_mb=r.reserved_host_memory_mb, reserved_disk_gb=r.reserved_host_disk_gb)


def power_options_from_conf(conf) -> powermod.PowerOptions:
    p = conf.power
    return powermod.PowerOptions(stop_timeout=p.stop_timeout,
                                 max_stop_timeout=p.max_stop_timeout,
                                 acpi_retry_interval=p.acpi_retry_interval,
                                 reboot_timeout=p.reboot_timeout)


def qemu_gid(name: str) -> int | None:
    """The gid of QEMU's group ``name`` (None for an empty name)."""
    if not name:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise exception.ConfigError(reason='[libvirt] qemu_group: no group %r on this node '
                                           '(tools/setup-node.sh makes libvirt-qemu)'
                                    % name) from None


def storage_from_conf(conf, runner, dirs: instancedir.InstanceDirs):
    if conf.storage.backend == 'lvm':
        return lvm_storage.LvmBackend(runner, conf.lvm.volume_group,
                                      conf.lvm.report_cache_seconds, wipe=conf.storage.wipe)
    return file_storage.FileBackend(runner, dirs, conf.storage.file_reserved_mb * 1024 * 1024)


def image_cache_from_conf(conf, runner, dirs: instancedir.InstanceDirs, runtime):
    for source in conf.images.sources:
        try:
            imageref.allowed(source + 'x', [source])
        except imageref.Refused as exc:
            raise exception.ConfigError(reason='[images] sources: %r: %s' % (source, exc)) \
                from None
    i = conf.images
    return imagecache.ImageCache(runner, dirs, os.path.realpath(i.cache_dir),
                                 int(i.cache_max_gb * 1024 ** 3), runtime.workqueue.execute,
                                 runtime.bridge, i.max_downloads, i.stall_timeout,
                                 i.download_timeout)


class AgentService:
    """The compute agent: call ``start()``, then ``wait()`` until a signal stops it."""

    def __init__(self, conf, libvirt_mod=None):
        self.conf = conf
        self.started_at = time.time()
        self.runtime = workqueue.RUNTIMES[conf.runtime](conf.workqueue.threads,
                                                        conf.workqueue.stats_samples,
                                                        conf.workqueue.reserved_threads)
        self.tracer = (tracemod.Tracer(conf.trace.path, 'compute-agent %s' % conf.host,
                                       conf.trace.max_events)
                       if conf.trace.path else tracemod.NullTracer())
        self.metrics = (metricsmod.Metrics(self._metric_sources) if conf.metrics.port
                        else metricsmod.NullMetrics())
        self.metrics_port = None
        if self.tracer.enabled:
            self.runtime.workqueue.observers.append(self.tracer.on_call)
        if conf.metrics.port:
            self.runtime.workqueue.observers.append(self.metrics.on_call)
        self.send_waits = rpc.keep_send_connections(conf, conf.rpc.send_connections)
        self.transport = rpc.get_transport(conf)
        self.send_connections = 0           # opened at start
        self.reporter = self._reporter(conf)
        self.dirs = instancedir.InstanceDirs(conf.instances_path,     # their one owner
                                             self.runtime.workqueue.execute,
                                             qemu_gid(conf.libvirt.qemu_group))
        self.driver = libvirt_driver.LibvirtDriver(conf.libvirt, conf.host, self.dirs,
                                                   self.runtime, libvirt_mod)
        self.commands = commands.CommandRunner(
            self.runtime.workqueue,
            operations.Policy(volume_group=conf.lvm.volume_group,
                              image_dir=os.path.realpath(conf.image_dir),
                              instances_path=conf.instances_path,
                              cache_dir=os.path.realpath(conf.images.cache_dir),
                              image_sources=tuple(conf.images.sources)),
            env={'LVM_SYSTEM_DIR': conf.lvm.lvm_system_dir} if conf.lvm.lvm_system_dir else {},
            timeout=conf.storage.command_timeout)
        self.storage = storage_from_conf(conf, self.commands, self.dirs)
        self.seeds = seedsmod.SeedDisks(self.commands, self.dirs,
                                        self.runtime.workqueue.execute)
        self.images = image_cache_from_conf(conf, self.commands, self.dirs, self.runtime)
        self.journal = journalmod.JobJournal(conf.jobs.journal,
                                             self.runtime.workqueue.execute_urgent,
                                             sleep=self.runtime.sleep)
        self.manager = managermod.ComputeManager(
            self.driver, self.storage, self.runtime, self.reporter, limits_from_conf(conf),
            conf.host, self.journal, self.dirs,
            allocation=allocation_from_conf(conf), job_retention=conf.jobs.retention,
            max_boot_attempts=conf.jobs.max_boot_attempts,
            reconnect_interval=conf.libvirt.reconnect_interval, tracer=self.tracer,
            metrics=self.metrics, power=power_options_from_conf(conf),
            ready_within=conf.readiness.expect_within, seeds=self.seeds, images=self.images,
            pools=poolsmod.pools_from_conf(conf, limits_from_conf(conf)),
            warm={'quiet_seconds': conf.warm.quiet_seconds,
                  'ready_timeout': conf.warm.ready_timeout,
                  'retry_interval': conf.warm.retry_interval,
                  'settle_seconds': conf.warm.settle_seconds,
                  'max_disk_gb': conf.warm.max_disk_gb,
                  'max_spare_age': conf.warm.max_spare_age})
        target = oslo_messaging.Target(topic='compute', server=conf.host)
        self.server = oslo_messaging.get_rpc_server(
            self.transport, target,
            [rpc_server.ComputeEndpoint(self.manager, self.stats, self._write_trace)],
            executor=self.runtime.name)
        self._stop = threading.Event()

    def _reporter(self, conf) -> reportermod.StateReporter:
        """The coalescing reporter, sending signed reports to the conductor (over the fleet's
        virtual host when ``[conductor] transport_url`` names it)."""
        key = None
        if conf.conductor.report_key:
            try:
                key = signing.parse_key(conf.conductor.report_key)
            except ValueError as exc:
                raise exception.ConfigError(reason='[conductor] report_key: %s' % exc)
        else:
            LOG.warning('no [conductor] report_key: the conductor refuses unsigned reports')
        self.report_transport = (rpc.get_transport(conf, conf.conductor.transport_url)
                                 if conf.conductor.transport_url else self.transport)
        conductor = conductor_api.ReportAPI(self.report_transport, conf.conductor.topic, key,
                                            timeout=conf.conductor.report_timeout,
                                            version_cap=conf.upgrade_levels.conductor)
        return reportermod.StateReporter(
            lambda states, usage: conductor.report(conf.host, states, usage),
            window=conf.conductor.report_window, retry_max=conf.conductor.report_retry_max,
            busy_window=conf.conductor.report_busy_window,
            sleep=self.runtime.sleep, tracer=self.tracer)

    def _write_trace(self) -> dict:
        # Serialising a large trace takes a while: on a work-queue thread, not the hub.
        return self.runtime.workqueue.execute_urgent('trace.write', self.tracer.write)

    def _metric_sources(self) -> dict:
        return {'driver': self.driver, 'commands': self.commands, 'reporter': self.reporter,
                'manager': self.manager}

    def stats(self) -> dict:
        """The agent's counters for ``get_stats``."""
        import resource
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {'host': self.conf.host, 'uptime_s': round(time.time() - self.started_at, 3),
                'runtime': {'name': self.runtime.name, 'green': workqueue.green()},
                'facts': self.manager.facts, 'workqueue': self.runtime.workqueue.stats(),
                'driver': self.driver.stats(), 'reporter': self.reporter.stats(),
                'storage': self.storage.stats(), 'commands': dict(self.commands.launches),
                'images': self.images.stats(),
                'manager': self.manager.stats(), 'trace': self.tracer.stats(),
                'metrics_port': self.metrics_port,
                'rpc': {'send_connections': self.send_connections,
                        'send_waits': self.send_waits.count if self.send_waits else 0},
                'process': {'max_rss_kb': usage.ru_maxrss,
                            'cpu_s': round(usage.ru_utime + usage.ru_stime, 3)}}

    def start(self) -> None:
        """Reconcile, then start the reporter, audits, metrics and the RPC server."""
        began = time.monotonic()
        self.runtime.spawn(self.journal.run)
        LOG.info('image cache %s: %s', self.images.cache_dir, self.images.init())
        self.manager.init_host()
        self.runtime.spawn(self.reporter.run)
        self.runtime.spawn(self.manager.warm.run)
        if self.conf.resources.audit_interval > 0:
            self.runtime.spawn(self.manager.audits.run, self.conf.resources.audit_interval)
        if self.conf.metrics.port:
            self.metrics_port = self.metrics.serve(self.conf.metrics.listen_address,
                                                   self.conf.metrics.port)
        self.server.start()
        if self.conf.rpc.send_connections:
            self.runtime.spawn(self._open_send_connections)
        LOG.info('compute-agent %s serving topic compute (virt_type=%s, runtime %s, '
                 '%d work-queue threads) %.1f s after start; reconciled %s', self.conf.host,
                 self.conf.libvirt.virt_type, self.runtime.name, self.conf.workqueue.threads,
                 time.monotonic() - began, dict(self.manager.reconciled) or 'nothing')

    def _open_send_connections(self) -> None:
        self.send_connections = rpc.open_send_connections(self.transport,
                                                          self.conf.rpc.send_connections)
        LOG.info('%d send connections to the broker open', self.send_connections)

    def wait(self) -> None:
        """Block until the service is told to stop (SIGTERM/SIGINT), then stop it."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *a: self._stop.set())
        while not self._stop.wait(1.0):
            pass
        self.stop()

    def stop(self) -> None:
        """Stop serving: RPC server first, then the warm filler (a spare being booted is
        removed while libvirt is still connected) and the audit loop, then flush reports and
        the journal."""
        LOG.info('stopping')
        self.server.stop()
        rpc_drain.leave_unacked(self.server)        # requests delivered now wait for the restart
        self.server.wait()
        self.manager.warm.stop()
        self.manager.audits.stop()        # its listings need libvirt, closed below
        self.reporter.flush(timeout=5.0)
        self.reporter.stop()
        try:
            self.journal.flush(timeout=5.0)
        except journalmod.JournalError as exc:
            LOG.error('job journal not flushed: %s', exc)
        self.journal.stop()
        if self.tracer.enabled:
            try:
                LOG.info('trace written: %s', self.tracer.write())
            except exception.TraceWriteFailed as exc:
                LOG.error('%s', exc)
        if self.conf.metrics.port:
            self.metrics.stop()
        self.driver.host.close()
        self.commands.shutdown()
        self.transport.cleanup()
        if self.report_transport is not self.transport:
            self.report_transport.cleanup()
