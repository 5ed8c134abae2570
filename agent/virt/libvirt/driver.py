"""The libvirt driver: boot, delete, stop, start and reboot domains, and turn lifecycle
events into power states.

Hot path of a boot: exactly two libvirt RPCs, defineXML and createWithFlags (``create()``
would cost two by itself). Stop, start, reboot: one RPC each (shutdownFlags or destroy,
createWithFlags, reboot or reset) on the domain object kept since its boot or the last
listing. Host facts come from the cache in ``Host``; instance state comes from lifecycle
events, never from polling.
"""
import dataclasses
import functools
import logging
import os
import random
import time
from typing import Callable

from agent import crashpoints
from agent import exception
from agent import instancedir
from agent import spec as specmod
from agent.virt import driver
from agent.virt.libvirt import config as vconfig
from agent.virt.libvirt import console as vconsole
from agent.virt.libvirt import domains as vdomains
from agent.virt.libvirt import guestagent as vguestagent
from agent.virt.libvirt import host as vhost
from agent.virt.libvirt import identity as videntity
from agent.virt.libvirt import listing as vlisting
from agent.virt.libvirt import spares as vspares
from agent.virt.libvirt import states as vstates

LOG = logging.getLogger(__name__)


def random_mac() -> str:
    return '52:54:00:%02x:%02x:%02x' % tuple(random.randint(0, 255) for _ in range(3))


START_RETRY_PAUSES = (0.2, 1.0)    # a start libvirt calls busy (EAGAIN) is tried again


class LibvirtDriver(driver.ComputeDriver):
    """ComputeDriver over one libvirt connection (see ``host.Host``). Which domains are ours
    is kept by ``domains.Domains``; the listing, spares, identity ports and the guest agent
    are parts of their own."""

    def __init__(self, options, node: str, dirs: instancedir.InstanceDirs, runtime,
                 libvirt_mod=None):
        """``options``: the ``[libvirt]`` option group only; ``node``: this node's host name
        (written into, and required in, the metadata of every domain it owns); ``dirs``: the
        instance directories (console logs)."""
        if libvirt_mod is None:
            import libvirt as libvirt_mod
        self._lv = libvirt_mod
        self._options = options
        self._node = node
        self._virt_type = options.virt_type
        self._dirs = dirs
        self._listener: Callable[[object], None] = lambda ev: None
        self._bridge = runtime.bridge(self._dispatch)
        self._sleep = runtime.sleep
        self._wq = runtime.workqueue
        self.host = vhost.Host(
            options.connection_uri, runtime, libvirt_mod, event_sink=self._bridge.put,
            keepalive=(options.keepalive_interval, options.keepalive_count),
            retry_interval=options.reconnect_interval)
        self._identity = videntity.IdentityPorts(options.identity_socket_dir, self._wq,
                                                 runtime.spawn, self._bridge.put)
        self._domains = vdomains.Domains(self.host, node,
                                         functools.partial(vspares.restored_as, dirs))
        self._spares = vspares.SpareDomains(self.host, node, dirs, self._domains,
                                            self._identity, self._wq, self._guest_config,
                                            libvirt_mod)
        self._listing = vlisting.Listing(self.host, libvirt_mod, self._domains)
        self._agent = vguestagent.GuestAgent(self.host, libvirt_mod, self._domains)

    # -- set-up -----------------------------------------------------------------------------
    def init_host(self) -> dict:
        self.host.connect()
        facts = self.host.facts()
        types = facts.domain_types.get(facts.arch, [])
        if self._virt_type not in types:
            raise exception.ConfigError(
                reason='[libvirt] virt_type=%s is not offered by %s for %s (offers: %s)'
                % (self._virt_type, self.host.uri, facts.arch, ', '.join(types) or 'none'))
        os.makedirs(self._dirs.base, exist_ok=True)
        return facts.__dict__.copy()

    def set_event_listener(self, listener) -> None:
        self._listener = listener

    def is_connected(self) -> bool:
        return self.host.connected

    def power_state(self, uuid: str) -> str | None:
        conn, epoch = self.host.conn(), self.host.epoch
        try:
            dom = self.host.call('lookupByUUIDString', conn.lookupByUUIDString,
                                 self._domains.domain(uuid), epoch=epoch)
            state = self.host.call('state', dom.state, epoch=epoch)[0]
        except exception.DomainNotFound:
            return None
        if not self._domains.owned(uuid, dom):
            return None        # that uuid is someone else's domain: ours does not exist
        self._domains.cache(uuid, epoch, dom)
        return vstates.from_state(self._lv, state)

    def list_instances(self, with_readiness: bool = False) -> list[driver.InstanceInfo]:
        return self._listing.list_instances(with_readiness)

    def ensure_reconnecting(self) -> None:
        self.host.ensure_reconnecting()

    # -- events (in the bridge's greenthread) ------------------------------------------------
    def _dispatch(self, item) -> None:
        if isinstance(item, vhost.ConnectionLost):
            if item.epoch != self.host.epoch:
                return         # an older connection's close: a newer one is open
            self.host.mark_disconnected()
            self._listener(driver.HypervisorLost(timestamp=item.timestamp))
            self.host.ensure_reconnecting()
            return
        if isinstance(item, vhost.Reconnected):
            self._listener(driver.HypervisorReconnected(timestamp=item.timestamp))
            return
        if isinstance(item, videntity.IdentityAck):        # keyed by the instance's uuid
            self._listener(driver.IdentityAcknowledged(
                uuid=item.uuid, clock_skew=item.clock - item.timestamp,
                timestamp=item.timestamp))
            return
        if self._domains.is_spare(item.uuid):
            self._listener(driver.SpareEvent(
                uuid=item.uuid, timestamp=item.timestamp,
                ready=item.connected if isinstance(item, vhost.AgentChannelEvent) else None,
                stopped=(isinstance(item, vhost.LifecycleEvent)
                         and item.event == self._lv.VIR_DOMAIN_EVENT_STOPPED)))
            return
        uuid = self._domains.instance(item.uuid)
        ours = self._domains.is_ours(item.uuid)
        if isinstance(item, vhost.RebootEvent):
            if ours:
                self._listener(driver.InstanceRebooted(uuid=uuid, timestamp=item.timestamp))
            return
        if isinstance(item, vhost.AgentChannelEvent):
            if ours:
                self._listener(driver.GuestReadiness(
                    uuid=uuid, ready=item.connected, timestamp=item.timestamp,
                    cause='agent channel %s (reason %d)' % (
                        'connected' if item.connected else 'disconnected', item.reason)))
            return
        seen = self._domains.observe(item.uuid, item.name,
                                     defined=item.event == self._lv.VIR_DOMAIN_EVENT_DEFINED,
                                     undefined=item.event == self._lv.VIR_DOMAIN_EVENT_UNDEFINED)
        if seen == vdomains.VANISHED:
            self._listener(driver.InstanceVanished(uuid=uuid, timestamp=item.timestamp))
        if seen != vdomains.OURS:
            return
        state = vstates.from_event(self._lv, item.event, item.detail)
        if state is not None:
            self._listener(driver.PowerStateChanged(
                uuid=uuid, power_state=state, cause='%d/%d' % (item.event, item.detail),
                timestamp=item.timestamp))

    # -- boot / delete ----------------------------------------------------------------------
    def _guest_config(self, spec: specmod.BootSpec, disks: tuple) -> vconfig.GuestConfig:
        facts = self.host.facts()
        configs = [vconfig.DiskConfig(path=d.path, format=d.format, source_type=d.kind,
                                      backing=d.backing) for d in disks if not d.readonly]
        if not configs and spec.image:
            # No root disk from storage: attach the image with a throw-away overlay, so the
            # guest can write and the shared image is never modified.
            configs = [vconfig.DiskConfig(path=spec.image, format=spec.image_format,
                                          transient=True)]
        configs += [vconfig.DiskConfig(path=d.path, format=d.format, source_type=d.kind,
                                       readonly=True) for d in disks if d.readonly]   # seed
        disks = tuple(dataclasses.replace(c, target='vd' + chr(ord('a') + i))
                      for i, c in enumerate(configs))
        if spec.pool:
            self._identity.make_dir()
        nics = tuple(vconfig.NicConfig(type=n.type, bridge=n.bridge, mac=n.mac or random_mac())
                     for n in spec.nics)
        return vconfig.GuestConfig(
            genid=spec.pool is not None, rng=spec.pool is not None,
            identity_socket=self._identity.path(spec.uuid) if spec.pool else None,
            uuid=spec.uuid, name=spec.name, virt_type=self._virt_type, arch=facts.arch,
            vcpus=spec.vcpus, memory_mb=spec.memory_mb,
            console_log=os.path.join(self.instance_dir(spec.uuid), vconsole.CONSOLE_LOG),
            kernel=spec.kernel, initrd=spec.initrd, cmdline=spec.cmdline, disks=disks, nics=nics,
            cpu_mode=self._options.cpu_mode, tcg_tb_cache_mb=self._options.tcg_tb_cache_mb,
            metadata=(('host', self._node), ('created', '%.3f' % time.time()),
                      ('vcpus', str(spec.vcpus)), ('memory_mb', str(spec.memory_mb)),
                      ('disk_gb', str(spec.disk_gb))))

    def console_output(self, uuid: str, max_bytes: int) -> dict:
        return self._wq.execute('console.read', vconsole.read_tail,
                                os.path.join(self.instance_dir(uuid), vconsole.CONSOLE_LOG), max_bytes)

    def instance_dir(self, uuid: str) -> str:
        """The instance's marked directory (its console log lives there)."""
        return self._dirs.path(uuid)

    def check_uuid_free(self, uuid: str) -> None:
        self._domains.check_free(uuid)

    def spawn(self, spec: specmod.BootSpec, disks: tuple = ()) -> None:
        conn = self.host.conn()            # before anything is made: nothing to undo
        self.check_uuid_free(spec.uuid)    # a foreign domain seen since the request
        xml = self._guest_config(spec, disks).to_xml()
        self._dirs.create(spec.uuid)
        # HypervisorUnavailable: the connection went during the call, which may or may not
        # have been carried out; nothing is undone here (the manager settles it).
        epoch = self.host.epoch          # both calls belong to this connection
        try:
            with self._domains.defining(spec.uuid):
                dom = self.host.call('defineXML', conn.defineXML, xml, epoch=epoch)
                self._domains.defined(spec.uuid, epoch, dom)   # inside: events see it ours
            crashpoints.reached('boot.defined', spec.uuid)
        except exception.HypervisorUnavailable:
            raise
        except exception.AgentError:
            self._remove_files(spec.uuid)
            raise
        try:
            self._start(spec.uuid, dom, epoch)
            crashpoints.reached('boot.started', spec.uuid)
        except exception.HypervisorUnavailable:
            raise
        except exception.DomainStateConflict:
            # "already running": the define updated a domain someone else runs under the
            # same name and uuid (defined just before, its event not yet here). Not ours:
            # never undefine it.
            LOG.error('[instance: %s] a running domain %s already had this uuid: left '
                      'alone', spec.uuid, dom.name())
            self._domains.not_ours(spec.uuid, dom.name())
            self._remove_files(spec.uuid)
            raise exception.UuidTaken(uuid=spec.uuid, name=dom.name()) from None
        except exception.HypervisorError:
            LOG.warning('[instance: %s] start failed; removing its definition', spec.uuid)
            try:
                self._domains.undefine(spec.uuid, dom)
            except exception.AgentError as exc:   # the start's error is the one to report
                LOG.warning('[instance: %s] could not remove the definition: %s', spec.uuid, exc)
            self._remove_files(spec.uuid)
            raise

    def _start(self, uuid: str, dom, epoch: int) -> None:
        """createWithFlags; again after a pause when libvirt says it is busy (EAGAIN: seen
        during storms, where libvirtd's cgroup BPF load is interrupted), at most
        len(START_RETRY_PAUSES) times. Any other error is final."""
        for pause in START_RETRY_PAUSES + (None,):
            try:
                self.host.call('createWithFlags', dom.createWithFlags, 0, epoch=epoch)
                return
            except exception.HypervisorBusy as exc:
                if pause is None:
                    raise
                LOG.warning('[instance: %s] start: %s; trying again in %.1f s', uuid, exc, pause)
                self._sleep(pause)

    def destroy(self, uuid: str) -> None:
        dom = self._domains.handle(uuid)
        if dom is not None:
            try:
                self.host.call('destroy', dom.destroy)
            except (exception.DomainStateConflict, exception.DomainNotFound):
                pass        # not running, or gone already: the goal is "gone"
            crashpoints.reached('delete.destroyed', uuid)
            self._domains.undefine(uuid, dom)
            crashpoints.reached('delete.undefined', uuid)
        self._identity.remove(uuid)
        self._remove_files(uuid)

    # -- power (one libvirt RPC each; the state follows from lifecycle events) -------------
    def shutdown(self, uuid: str) -> None:
        dom = self._domains.handle_or_raise(uuid)
        self.host.call('shutdownFlags', dom.shutdownFlags,
                       self._lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        crashpoints.reached('stop.sent', uuid)

    def power_off(self, uuid: str) -> None:
        dom = self._domains.handle_or_raise(uuid)
        try:
            self.host.call('destroy', dom.destroy)
        except exception.DomainStateConflict:
            pass            # not running: already off
        crashpoints.reached('stop.sent', uuid)

    def power_on(self, uuid: str) -> None:
        dom = self._domains.handle_or_raise(uuid)
        # createWithFlags: one RPC (create() costs two: it looks the domain up again).
        self.host.call('createWithFlags', dom.createWithFlags, 0)
        crashpoints.reached('start.sent', uuid)

    def reboot(self, uuid: str, hard: bool) -> None:
        dom = self._domains.handle_or_raise(uuid)
        if hard:
            self.host.call('reset', dom.reset, 0)
        else:
            self.host.call('reboot', dom.reboot, self._lv.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        crashpoints.reached('reboot.sent', uuid)

    # -- warm boots (agent.virt.libvirt.spares), identity ports, the guest agent -----------
    def domain_name(self, uuid: str) -> str:
        return vconfig.domain_name(self._domains.domain(uuid))

    def spawn_spare(self, spec: specmod.BootSpec, disks: tuple, pool: str) -> None:
        self._spares.spawn(spec, disks, pool)

    def save_spare(self, uuid: str, path: str) -> str:
        return self._spares.save(uuid, path)

    def remove_spare(self, uuid: str) -> None:
        self._spares.remove(uuid)

    def restore_warm(self, spec: specmod.BootSpec, spare, disks: tuple) -> None:
        self._spares.restore(spec, spare, disks)

    def pause_spare(self, uuid: str) -> str:
        return self._spares.pause(uuid)

    def keep_hot_spare(self, uuid: str) -> None:
        self._spares.keep_hot(uuid)

    def resume_warm(self, spec: specmod.BootSpec, spare, disks: tuple,
                    identity: dict | None = None) -> None:
        self._spares.resume(spec, spare, disks, identity)

    def persist(self, uuid: str) -> None:
        self._spares.persist(uuid)

    def send_identity(self, uuid: str, identity: dict) -> None:
        self._identity.send(uuid, identity)

    def set_guest_time(self, uuid: str) -> None:
        self._agent.set_time(uuid)

    def guest_exec(self, uuid: str, argv: list[str]) -> int:
        return self._agent.exec(uuid, argv)

    def guest_exec_status(self, uuid: str, pid: int) -> dict | None:
        return self._agent.exec_status(uuid, pid)

    def _remove_files(self, uuid: str) -> None:
        self._dirs.remove(uuid)

    def stats(self) -> dict:
        return {'libvirt_calls': dict(self.host.calls),
                'libvirt_calls_total': sum(self.host.calls.values()),
                'connected': self.host.connected,
                'identity_answers_ignored': self._identity.ignored}
