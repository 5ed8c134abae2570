"""The libvirt driver: boot, delete, stop, start and reboot domains, and turn lifecycle
events into power states.

Hot path of a boot: exactly two libvirt RPCs, defineXML and createWithFlags (``create()``
would cost two by itself). Stop, start, reboot: one RPC each (shutdownFlags or destroy,
createWithFlags, reboot or reset) on the domain object kept since its boot or the last
listing. Host facts come from the cache in ``Host``; instance state comes from lifecycle
events, never from polling.
"""
import dataclasses
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
from agent.virt.libvirt import host as vhost
from agent.virt.libvirt import listing as vlisting
from agent.virt.libvirt import states as vstates
from agent.virt.libvirt import warm as vwarm

LOG = logging.getLogger(__name__)


def random_mac() -> str:
    return '52:54:00:%02x:%02x:%02x' % tuple(random.randint(0, 255) for _ in range(3))


START_RETRY_PAUSES = (0.2, 1.0)    # a start libvirt calls busy (EAGAIN) is tried again


class LibvirtDriver(vlisting.Listing, vwarm.WarmDomains, driver.ComputeDriver):
    """ComputeDriver over one libvirt connection (see ``host.Host``)."""

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
        # uuid -> (connection epoch, virDomain): no lookup on delete; an object of an older
        # connection is dead and never used.
        self._domains: dict = {}
        self._ours: set[str] = set()   # uuids of domains the agent made or adopted
        self._defining: set[str] = set()   # uuids whose defineXML is under way
        # uuid -> name of domains libvirt holds that are not ours (from listings and DEFINED
        # events): a boot of such a uuid is refused without a call.
        self._foreign: dict[str, str] = {}
        self._own_undefines: set[str] = set()   # UNDEFINED events we caused: not "vanished"
        # Warm instances run under their spare's libvirt uuid and name (libvirt restores a
        # saved image under no other): domain uuid <-> instance uuid, for those only. Every
        # other domain of ours has the instance's uuid.
        self._inst_of: dict[str, str] = {}
        self._dom_of: dict[str, str] = {}
        self._spares: set[str] = set()     # uuids of spares being made (their events apart)
        self._restored: dict[str, str] = {}    # instance uuid -> its restore XML (persist)
        self._identity: dict = {}          # instance uuid -> open identity-port connection

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
                                 self._dom_of.get(uuid, uuid), epoch=epoch)
            state = self.host.call('state', dom.state, epoch=epoch)[0]
        except exception.DomainNotFound:
            return None
        if not self._owned(uuid, dom):
            return None        # that uuid is someone else's domain: ours does not exist
        self._domains[uuid] = (epoch, dom)
        return vstates.from_state(self._lv, state)

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
        if item.uuid in self._spares:
            self._listener(driver.SpareEvent(
                uuid=item.uuid, timestamp=item.timestamp,
                ready=item.connected if isinstance(item, vhost.AgentChannelEvent) else None,
                stopped=(isinstance(item, vhost.LifecycleEvent)
                         and item.event == self._lv.VIR_DOMAIN_EVENT_STOPPED)))
            return
        uuid = self._inst_of.get(item.uuid, item.uuid)
        if isinstance(item, vhost.RebootEvent):
            if item.uuid in self._ours:
                self._listener(driver.InstanceRebooted(uuid=uuid, timestamp=item.timestamp))
            return
        if isinstance(item, vhost.AgentChannelEvent):
            if item.uuid in self._ours:
                self._listener(driver.GuestReadiness(
                    uuid=uuid, ready=item.connected, timestamp=item.timestamp,
                    cause='agent channel %s (reason %d)' % (
                        'connected' if item.connected else 'disconnected', item.reason)))
            return
        if item.event == self._lv.VIR_DOMAIN_EVENT_DEFINED and item.uuid not in self._ours \
                and item.uuid not in self._defining:
            self._foreign[item.uuid] = item.name
        elif item.event == self._lv.VIR_DOMAIN_EVENT_UNDEFINED:
            self._foreign.pop(item.uuid, None)
        if not item.name.startswith(vconfig.DOMAIN_PREFIX) or item.uuid in self._foreign:
            return   # not a domain of ours
        if item.event == self._lv.VIR_DOMAIN_EVENT_UNDEFINED:
            self._domains.pop(uuid, None)
            self._forget(item.uuid)
            if item.uuid in self._own_undefines:
                self._own_undefines.discard(item.uuid)
                return
            self._listener(driver.InstanceVanished(uuid=uuid, timestamp=item.timestamp))
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
            os.makedirs(self._options.identity_socket_dir, mode=0o700, exist_ok=True)
        nics = tuple(vconfig.NicConfig(type=n.type, bridge=n.bridge, mac=n.mac or random_mac())
                     for n in spec.nics)
        return vconfig.GuestConfig(
            genid=spec.pool is not None,
            identity_socket=self.identity_socket(spec.uuid) if spec.pool else None,
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
        name = self._foreign.get(uuid)
        if name is not None:
            raise exception.UuidTaken(uuid=uuid, name=name)
        # A warm instance runs under its spare's uuid; a spare being made has its own: a
        # define with that uuid would replace that domain's definition.
        if uuid in self._inst_of:
            raise exception.UuidInUse(uuid=uuid, what='the domain of instance %s'
                                      % self._inst_of[uuid])
        if uuid in self._spares:
            raise exception.UuidInUse(uuid=uuid, what='a spare being made')

    def spawn(self, spec: specmod.BootSpec, disks: tuple = ()) -> None:
        conn = self.host.conn()            # before anything is made: nothing to undo
        self.check_uuid_free(spec.uuid)    # a foreign domain seen since the request
        xml = self._guest_config(spec, disks).to_xml()
        self._dirs.create(spec.uuid)
        # HypervisorUnavailable: the connection went during the call, which may or may not
        # have been carried out; nothing is undone here (the manager settles it).
        epoch = self.host.epoch          # both calls belong to this connection
        self._defining.add(spec.uuid)
        try:
            dom = self.host.call('defineXML', conn.defineXML, xml, epoch=epoch)
            self._ours.add(spec.uuid)        # before it leaves _defining: events see it ours
            self._foreign.pop(spec.uuid, None)
            crashpoints.reached('boot.defined', spec.uuid)
        except exception.HypervisorUnavailable:
            raise
        except exception.AgentError:
            self._remove_files(spec.uuid)
            raise
        finally:
            self._defining.discard(spec.uuid)
        self._domains[spec.uuid] = (epoch, dom)
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
            self._ours.discard(spec.uuid)
            self._domains.pop(spec.uuid, None)
            self._foreign[spec.uuid] = dom.name()
            self._remove_files(spec.uuid)
            raise exception.UuidTaken(uuid=spec.uuid, name=dom.name()) from None
        except exception.HypervisorError:
            LOG.warning('[instance: %s] start failed; removing its definition', spec.uuid)
            try:
                self._undefine(spec.uuid, dom)
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

    def _handle(self, uuid: str):
        """The domain of ours with this uuid, or None: the cached object of the current
        connection (no call), else one lookup (plus one XMLDesc the first time, to check
        our metadata). A domain with this uuid that is not ours is never returned."""
        epoch, dom = self._domains.get(uuid, (None, None))
        if dom is not None and epoch == self.host.epoch:
            return dom
        epoch = self.host.epoch
        try:
            dom = self.host.call('lookupByUUIDString', self.host.conn().lookupByUUIDString,
                                 self._dom_of.get(uuid, uuid), epoch=epoch)
        except exception.DomainNotFound:
            return None
        if not self._owned(uuid, dom):
            LOG.warning('[instance: %s] the domain with this uuid (%s) is not ours: left '
                        'untouched', uuid, dom.name())
            return None
        self._domains[uuid] = (epoch, dom)
        return dom

    def _ours_or_raise(self, uuid: str):
        dom = self._handle(uuid)
        if dom is None:
            raise exception.DomainNotFound(op='lookup',
                                           reason='the hypervisor holds no domain of ours '
                                                  'with uuid %s' % uuid)
        return dom

    def destroy(self, uuid: str) -> None:
        dom = self._handle(uuid)
        if dom is not None:
            try:
                self.host.call('destroy', dom.destroy)
            except (exception.DomainStateConflict, exception.DomainNotFound):
                pass        # not running, or gone already: the goal is "gone"
            crashpoints.reached('delete.destroyed', uuid)
            self._undefine(uuid, dom)
            crashpoints.reached('delete.undefined', uuid)
        self.remove_identity_socket(uuid)
        self._remove_files(uuid)

    # -- power (one libvirt RPC each; the state follows from lifecycle events) -------------
    def shutdown(self, uuid: str) -> None:
        dom = self._ours_or_raise(uuid)
        self.host.call('shutdownFlags', dom.shutdownFlags,
                       self._lv.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
        crashpoints.reached('stop.sent', uuid)

    def power_off(self, uuid: str) -> None:
        dom = self._ours_or_raise(uuid)
        try:
            self.host.call('destroy', dom.destroy)
        except exception.DomainStateConflict:
            pass            # not running: already off
        crashpoints.reached('stop.sent', uuid)

    def power_on(self, uuid: str) -> None:
        dom = self._ours_or_raise(uuid)
        # createWithFlags: one RPC (create() costs two: it looks the domain up again).
        self.host.call('createWithFlags', dom.createWithFlags, 0)
        crashpoints.reached('start.sent', uuid)

    def reboot(self, uuid: str, hard: bool) -> None:
        dom = self._ours_or_raise(uuid)
        if hard:
            self.host.call('reset', dom.reset, 0)
        else:
            self.host.call('reboot', dom.reboot, self._lv.VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)
        crashpoints.reached('reboot.sent', uuid)

    def _undefine(self, uuid: str, dom) -> None:
        dom_uuid = self._dom_of.get(uuid, uuid)
        self._own_undefines.add(dom_uuid)
        try:
            self.host.call('undefine', dom.undefine)
        except exception.DomainNotFound:      # gone (a transient domain, once destroyed)
            self._own_undefines.discard(dom_uuid)
        except exception.HypervisorError:
            self._own_undefines.discard(dom_uuid)
            raise
        self._domains.pop(uuid, None)
        self._forget(dom_uuid)

    def _forget(self, dom_uuid: str) -> None:
        """A domain of ours is gone: drop it (and its instance mapping)."""
        self._ours.discard(dom_uuid)
        uuid = self._inst_of.pop(dom_uuid, None)
        if uuid is not None:
            self._dom_of.pop(uuid, None)
            self._restored.pop(uuid, None)

    def _map(self, uuid: str, dom_uuid: str) -> None:
        """Instance ``uuid`` runs as domain ``dom_uuid`` (ours)."""
        self._ours.add(dom_uuid)
        if dom_uuid != uuid:
            self._inst_of[dom_uuid] = uuid
            self._dom_of[uuid] = dom_uuid

    def _instance_of(self, meta: dict | None, dom_uuid: str) -> str | None:
        """The instance uuid a domain's metadata names, if it is an instance of this node's:
        a cold one carries its own uuid; a warm one the uuid of the spare it runs as, which
        the instance's marked directory records too (copied metadata is not enough)."""
        if not meta or meta.get('host') != self._node or meta.get('role') == 'spare':
            return None
        uuid = meta.get('uuid')
        if uuid != dom_uuid and not (meta.get('spare') == dom_uuid
                                     and specmod.is_canonical_uuid(uuid)
                                     and self.restored_as(uuid) == dom_uuid):
            return None
        # One domain per instance: a second one naming an instance that already runs as
        # another domain of ours (copied metadata) is not taken.
        held = self._dom_of.get(uuid, uuid if uuid in self._ours else None)
        return uuid if held in (None, dom_uuid) else None

    def _owned(self, uuid: str, dom) -> bool:
        """Whether ``dom`` is this agent's: made or adopted by it, or carrying its metadata
        naming this uuid and this node (one XMLDesc call, never on the boot's hot path)."""
        dom_uuid = dom.UUIDString()
        if dom_uuid in self._foreign:
            return False
        if dom_uuid in self._ours:
            return self._inst_of.get(dom_uuid, dom_uuid) == uuid
        meta = vconfig.parse_metadata(self.host.call('XMLDesc', dom.XMLDesc, 0))
        if self._instance_of(meta, dom_uuid) == uuid:
            self._map(uuid, dom_uuid)
            self._foreign.pop(dom_uuid, None)
            return True
        self._foreign[dom_uuid] = dom.name()
        return False

    def _remove_files(self, uuid: str) -> None:
        self._dirs.remove(uuid)

    def stats(self) -> dict:
        return {'libvirt_calls': dict(self.host.calls),
                'libvirt_calls_total': sum(self.host.calls.values()),
                'connected': self.host.connected}
