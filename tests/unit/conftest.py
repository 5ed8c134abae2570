"""Unit-test fixtures: a fake libvirt, a private config, and an agent built on them.

Unit tests never spawn processes (the autouse fixture refuses), never touch RabbitMQ or a real
libvirtd, and run the agent's plain code on native threads (``workqueue.native_runtime``).
"""
import os
import shutil
import subprocess
import tempfile
import threading
import time

import pytest
from oslo_config import cfg

from agent.conf import conductor as conf_conductor
from agent.conf import default as conf_default
from agent.conf import jobs as conf_jobs
from agent.conf import libvirt as conf_libvirt
from agent.conf import resources as conf_resources
from agent.conf import workqueue as conf_workqueue
from agent import instancedir
from agent import journal as journalmod
from agent.compute import manager as managermod
from agent.compute import power as powermod
from agent import reporter as reportermod
from agent import resources
from agent import spec as specmod
from agent import workqueue
from agent.conf import storage as conf_storage
from agent.storage import commands
from agent.storage import file as file_storage
from agent.storage import imagecache
from agent.storage import lvm as lvm_storage
from agent.storage import operations
from agent.storage import seeds as seedsmod
from agent.virt.libvirt import driver as libvirt_driver
from tests.unit import fakelibvirt
from tests.unit import fakelvm
from tests.unit import qcow2


@pytest.fixture(autouse=True)
def no_subprocesses(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError('unit tests must not spawn processes: %r' % (args[:1],))
    monkeypatch.setattr(subprocess.Popen, '__init__', refuse)


def wait_until(predicate, timeout: float = 10.0, what: str = 'condition'):
    """Wait for background work to reach a state; the timeout only catches hangs."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(0.005)


@pytest.fixture
def hv():
    return fakelibvirt.reset()


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / 'images'
    d.mkdir()
    (d / 'vmlinuz').write_bytes(b'kernel')
    (d / 'initrd.img').write_bytes(b'initrd')
    (d / 'disk.raw').write_bytes(b'\0' * 512)
    (d / 'disk.qcow2').write_bytes(qcow2.header(size=1 << 30))
    return d


@pytest.fixture
def conf(tmp_path, image_dir):
    c = cfg.ConfigOpts()
    for mod in (conf_default, conf_libvirt, conf_workqueue, conf_conductor, conf_storage,
                conf_resources, conf_jobs):
        mod.register_opts(c)
    c([], project='compute-agent-test', default_config_files=[])
    c.set_override('host', 'node1')
    c.set_override('image_dir', str(image_dir))
    c.set_override('instances_path', str(tmp_path / 'instances'))
    c.set_override('journal', str(tmp_path / 'jobs.sqlite'), group='jobs')
    c.set_override('virt_type', 'qemu', group='libvirt')
    c.set_override('connection_uri', 'fake:///', group='libvirt')
    c.set_override('reconnect_interval', 0.05, group='libvirt')
    sockets = tempfile.mkdtemp(prefix='ca-id-', dir='/tmp')     # short: unix socket paths
    c.set_override('identity_socket_dir', sockets, group='libvirt')
    yield c
    # The option groups are module-level objects that ConfigOpts instances share (oslo.config
    # copies them shallowly): an override left set would leak into later tests.
    c.reset()
    shutil.rmtree(sockets, ignore_errors=True)


# Short waits: a guest of the fake libvirt answers the power button at once, or never.
TEST_POWER = powermod.PowerOptions(stop_timeout=2, max_stop_timeout=60, acpi_retry_interval=0.3,
                                   reboot_timeout=1)


class Reports:
    """The conductor side of the reporter: keeps every batch and resource report it was sent."""

    def __init__(self):
        self.batches: list[list[dict]] = []
        self.usage: list[dict] = []
        self.lock = threading.Lock()
        self.delay = 0.0

    def send(self, states, resources=None):
        if self.delay:
            time.sleep(self.delay)
        with self.lock:
            if states:
                self.batches.append(list(states))
            if resources is not None:
                self.usage.append(resources)

    def latest(self, uuid):
        with self.lock:
            found = [s for b in self.batches for s in b if s['uuid'] == uuid]
        return max(found, key=lambda s: s['seq']) if found else None


class Agent:
    """An agent (manager, libvirt driver, storage) over the fake libvirt and fake LVM."""

    def __init__(self, conf, hv, lvm=None, backend='lvm', vg=None, allocation=None,
                 tracer=None, metrics=None, power=None, ready_within=300.0, pools=None,
                 warm=None, image_sources=(), cache_max: int = 1 << 30):
        self.hv = hv
        self.lvm = lvm or fakelvm.FakeLvm()
        self.runtime = workqueue.native_runtime(4)
        # As the agent's: their blocking work on the work queue.
        self.dirs = instancedir.InstanceDirs(conf.instances_path, self.runtime.workqueue.execute)
        self.runtime.workqueue.observers.extend(o.on_call for o in (tracer, metrics) if o)
        self.commands = commands.CommandRunner(
            self.runtime.workqueue,
            operations.Policy(volume_group=vg or self.lvm.vg,
                              image_dir=os.path.realpath(conf.image_dir),
                              instances_path=conf.instances_path,
                              cache_dir=os.path.join(os.path.dirname(conf.instances_path),
                                                     'image-cache'),
                              image_sources=tuple(image_sources)),
            worker_factory=self.lvm.worker)
        if backend == 'lvm':
            self.storage = lvm_storage.LvmBackend(self.commands, vg or self.lvm.vg,
                                                  cache_seconds=60,
                                                  device_exists=self.lvm.device_exists)
        else:
            self.storage = file_storage.FileBackend(self.commands, self.dirs)
        self.seeds = seedsmod.SeedDisks(self.commands, self.dirs)
        self.images = imagecache.ImageCache(
            self.commands, self.dirs, os.path.join(os.path.dirname(conf.instances_path),
                                                   'image-cache'), cache_max,
            bridge=self.runtime.bridge, stall_timeout=2)
        self.images.init()
        self.reports = Reports()
        self.reporter = reportermod.StateReporter(self.reports.send, window=0.005, tracer=tracer)
        self.runtime.spawn(self.reporter.run)
        self.driver = libvirt_driver.LibvirtDriver(conf.libvirt, conf.host, self.dirs,
                                                   self.runtime, fakelibvirt)
        limits = specmod.Limits(image_dir=conf.image_dir, bridge_exists=lambda n: n == 'br0',
                                allow_user_nics=True, bridges=frozenset({'br0', 'br1'}),
                                image_sources=tuple(image_sources))
        self.journal = journalmod.JobJournal(conf.jobs.journal,
                                             self.runtime.workqueue.execute_urgent)
        self.runtime.spawn(self.journal.run)
        self.manager = managermod.ComputeManager(
            self.driver, self.storage, self.runtime, self.reporter, limits, 'node1',
            self.journal, self.dirs, allocation=allocation or resources.Allocation(),
            job_retention=conf.jobs.retention, max_boot_attempts=conf.jobs.max_boot_attempts,
            reconnect_interval=0.05, tracer=tracer, metrics=metrics,
            power=power or TEST_POWER, ready_within=ready_within, pools=pools, warm=warm,
            seeds=self.seeds, images=self.images)
        self.manager.init_host()

    def wait_job(self, job_id):
        wait_until(lambda: self.manager.requests.get_job(job_id)['state'] in ('done', 'failed'),
                   what='job %s' % job_id)
        return self.manager.requests.get_job(job_id)

    def wait_state(self, uuid, vm_state):
        wait_until(lambda: self.manager.instances.get(uuid) is not None
                   and self.manager.instances[uuid].vm_state == vm_state,
                   what='%s to be %s' % (uuid, vm_state))

    def wait_reported(self, uuid, vm_state):
        self.reporter.flush(10)
        wait_until(lambda: (self.reports.latest(uuid) or {}).get('vm_state') == vm_state,
                   what='conductor to see %s %s' % (uuid, vm_state))

    def stop(self):
        """A clean stop: everything reported and journaled first."""
        self.reporter.flush(10)
        self.reporter.stop()
        self.journal.flush(10)
        self.journal.stop()
        self.runtime.workqueue.shutdown()

    def crash(self):
        """Stop like kill -9: nothing flushed, background work abandoned where it is."""
        self.reporter.stop()
        self.journal.stop()
        self.runtime.workqueue.shutdown()


@pytest.fixture
def agent(conf, hv):
    a = Agent(conf, hv)
    yield a
    a.stop()


def boot_spec(uuid='11111111-2222-3333-4444-555555555555', **extra):
    spec = {'uuid': uuid, 'vcpus': 1, 'memory_mb': 128, 'kernel': 'vmlinuz',
            'initrd': 'initrd.img', 'cmdline': 'console=ttyS0'}
    spec.update(extra)
    return spec
