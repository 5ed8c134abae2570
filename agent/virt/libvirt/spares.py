"""The libvirt side of warm boots: spares (started, saved, removed) and restores.

A spare is a transient domain of its own identity (``createXML``: one call), saved to a file
once its guest is ready (``saveFlags``; the domain goes) with the XML libvirt stored in the
image read back once (``saveImageGetXMLDesc``), or kept hot: paused in memory (``suspend``).
A warm boot is ONE call: ``restoreFlags``, with that XML carrying the instance's metadata,
disk, console log and identity socket, or ``resume`` of a hot spare, whose console log and
identity socket become the instance's first (files renamed; QEMU holds them open). The guest
runs on; it is ready once it acknowledged its identity. The job then makes the domain
persistent (``defineXML``; a resumed one gets the instance's metadata first,
``setMetadata``) so that stop and start keep it, as they keep a cold instance's.
"""
import dataclasses
import functools
import logging
import os
import time
import xml.etree.ElementTree as ET

from agent import durable
from agent import exception
from agent import instancedir
from agent import spec as specmod
from agent.virt.libvirt import config as vconfig
from agent.virt.libvirt import console as vconsole
from agent.virt.libvirt import domains as vdomains
from agent.virt.libvirt import identity as videntity

LOG = logging.getLogger(__name__)

RESTORED_AS = 'restored-as'    # in a warm instance's directory: its domain's uuid


def restored_as(dirs: instancedir.InstanceDirs, uuid: str) -> str | None:
    """The libvirt uuid a warm instance was restored as, from its marked directory."""
    try:
        with open(os.path.join(dirs.path(uuid), RESTORED_AS)) as f:
            return f.read(64).strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


class SpareDomains:
    """Spares' domains and restores over one connection (``host``), recorded in ``domains``."""

    def __init__(self, host, node: str, dirs: instancedir.InstanceDirs,
                 domains: vdomains.Domains, identity: videntity.IdentityPorts, workqueue,
                 guest_config, libvirt_mod):
        """``guest_config(spec, disks)``: the driver's GuestConfig of a boot spec."""
        self._host = host
        self._node = node
        self._dirs = dirs
        self._domains = domains
        self._identity = identity
        self._wq = workqueue
        self._guest_config = guest_config
        self._lv = libvirt_mod
        self._hot: dict = {}             # hot spare uuid -> (connection epoch, virDomain)

    def spawn(self, spec: specmod.BootSpec, disks: tuple, pool: str) -> None:
        conn = self._host.conn()
        config = dataclasses.replace(
            self._guest_config(spec, disks), genid=True, rng=True,
            identity_socket=self._identity.path(spec.uuid),
            metadata=(('host', self._node), ('role', 'spare'), ('pool', pool),
                      ('created', '%.3f' % time.time())))
        self._dirs.create(spec.uuid)
        self._identity.make_dir()
        self._domains.spare_started(spec.uuid)
        try:
            self._host.call('createXML', conn.createXML, config.to_xml(), 0)
        except exception.AgentError:
            self._domains.spare_gone(spec.uuid)
            raise

    def save(self, uuid: str, path: str) -> str:
        conn = self._host.conn()
        dom = self._host.call('lookupByUUIDString', conn.lookupByUUIDString, uuid)
        self._host.call('saveFlags', dom.saveFlags, path, None, 0)
        self._domains.spare_gone(uuid)
        return self._host.call('saveImageGetXMLDesc', conn.saveImageGetXMLDesc, path, 0)

    def remove(self, uuid: str) -> None:
        self._domains.spare_gone(uuid)
        self._hot.pop(uuid, None)
        try:
            dom = self._host.call('lookupByUUIDString', self._host.conn().lookupByUUIDString,
                                  uuid)
        except exception.DomainNotFound:
            self._identity.remove(uuid)
            return
        meta = vconfig.parse_metadata(self._host.call('XMLDesc', dom.XMLDesc, 0))
        if not self._domains.is_node_spare(meta, uuid):
            LOG.warning('[spare: %s] the domain with this uuid is not a spare of ours: left '
                        'alone', uuid)
            return
        try:
            self._host.call('destroy', dom.destroy)
        except (exception.DomainStateConflict, exception.DomainNotFound):
            pass
        self._identity.remove(uuid)

    def pause(self, uuid: str) -> str:
        """Make a ready spare hot: its identity port opened (its guest then waits in a read),
        its live XML read, then paused in memory; return that XML. Its events stay a
        spare's."""
        self._identity.connect(uuid)
        epoch = self._host.epoch
        dom = self._host.call('lookupByUUIDString', self._host.conn().lookupByUUIDString, uuid)
        xml = self._host.call('XMLDesc', dom.XMLDesc, 0)
        self._host.call('suspend', dom.suspend)
        self._hot[uuid] = (epoch, dom)
        return xml

    def keep_hot(self, uuid: str) -> None:
        """A hot spare found at start-up, kept: its events are a spare's again."""
        self._domains.spare_started(uuid)

    def resume(self, spec: specmod.BootSpec, spare, disks: tuple,
               identity: dict | None = None) -> None:
        """Hot spare ``spare`` becomes instance ``spec``: the domain is mapped to the
        instance, then ONE work-queue call writes the guest its ``identity`` (QEMU queues it
        on the port the spare's connection holds open: the guest reads it as it wakes) after
        giving the port's socket the instance's name, makes ONE libvirt call, the resume, and
        moves the console log into the instance's directory (files renamed: QEMU holds them
        open). Its metadata and persistent definition are the instance's later
        (``persist``, after ready)."""
        conn = self._host.conn()
        epoch = self._host.epoch
        metadata = self._metadata(spec, spare)
        self._domains.adopt(spec.uuid, spare.uuid)     # before: the resume's events are its
        self._domains.spare_gone(spare.uuid)
        handle = self._hot.pop(spare.uuid, (None, None))
        dom = handle[1] if handle[0] == epoch else None
        if dom is None:              # made before a restart or a reconnect: one lookup
            dom = self._host.call('lookupByUUIDString', conn.lookupByUUIDString, spare.uuid,
                                  epoch=epoch)
        port = self._identity.hand_over(spare.uuid, spec.uuid, identity)

        def take(reached):
            # One work-queue hop on the way to the resume, not one per step: each hop waits
            # for the event loop, which serves the other boots of a storm meanwhile.
            port.move()          # first: whatever fails next, it goes with the instance
            port.write()
            reached()
            dom.resume()
            self._move_console(spec.uuid, spare.uuid)
        try:
            self._host.call_steps('resume', take, epoch=epoch)
        finally:
            port.done()
        self._domains.cache(spec.uuid, epoch, dom)
        # Its definition is built when it is made persistent (after ready): XML work in the
        # event loop here would come before other takes' resumes.
        self._domains.restored(
            spec.uuid, functools.partial(self._instance_xml, spec, spare, disks, metadata),
            live=(metadata, spare.uuid))

    def _metadata(self, spec: specmod.BootSpec, spare) -> tuple:
        return (('uuid', spec.uuid), ('name', spec.name), ('host', self._node),
                ('spare', spare.uuid), ('pool', spare.pool),
                ('created', '%.3f' % time.time()), ('vcpus', str(spec.vcpus)),
                ('memory_mb', str(spec.memory_mb)), ('disk_gb', str(spec.disk_gb)))

    def _instance_xml(self, spec: specmod.BootSpec, spare, disks: tuple, metadata) -> str:
        """The spare's XML as instance ``spec``'s: its metadata, disks, console, port."""
        return vconfig.restore_xml(
            spare.xml, spec.name, metadata,
            {'vd' + chr(ord('a') + i): d.path for i, d in enumerate(disks)},
            os.path.join(self._dirs.path(spec.uuid), vconsole.CONSOLE_LOG),
            self._identity.path(spec.uuid))

    def _take_over(self, uuid: str, spare: str) -> None:
        """The instance's marked directory, recording the domain it runs as (a restore: its
        XML names the instance). One work-queue call."""
        def record():
            self._dirs.create_here(uuid)
            self._record(uuid, spare)
        self._wq.execute('instance.record', record)

    def _move_console(self, uuid: str, spare: str) -> None:
        """A resumed spare's console log into the instance's marked directory (QEMU writes on
        into the file it holds open); no record yet: until its metadata names the instance,
        a restart sees a spare's domain (and removes it). On the work queue."""
        try:
            self._dirs.create_here(uuid)
            try:
                os.rename(os.path.join(self._dirs.path(spare), vconsole.CONSOLE_LOG),
                          os.path.join(self._dirs.path(uuid), vconsole.CONSOLE_LOG))
            except FileNotFoundError:
                pass
        except OSError as exc:
            raise exception.AgentError('moving the console log of spare %s to %s: %s'
                                       % (spare, uuid, exc)) from None

    def _record(self, uuid: str, dom_uuid: str) -> None:
        durable.write_file(os.path.join(self._dirs.path(uuid), RESTORED_AS), dom_uuid + '\n')

    def restore(self, spec: specmod.BootSpec, spare, disks: tuple) -> None:
        conn = self._host.conn()
        epoch = self._host.epoch
        xml = self._instance_xml(spec, spare, disks, self._metadata(spec, spare))
        self._take_over(spec.uuid, spare.uuid)
        self._domains.adopt(spec.uuid, spare.uuid)   # before: the restore's events are its
        try:
            self._host.call('restoreFlags', conn.restoreFlags, spare.image, xml, 0, epoch=epoch)
        except exception.HypervisorUnavailable:
            raise                             # may or may not have happened: settled later
        except exception.AgentError:
            self._domains.forget(spare.uuid)
            self._dirs.remove(spec.uuid)
            raise
        self._domains.restored(spec.uuid, xml)

    def persist(self, uuid: str) -> None:
        live = self._domains.live_metadata(uuid)
        if live is not None:
            # A resumed hot spare's running definition still names the spare: the record of
            # the domain it runs as, then the instance's metadata (what a restart recognises
            # it by, with that record), then its definition.
            metadata, dom_uuid = live
            dom = self._domains.handle_or_raise(uuid)
            self._wq.execute('instance.record', self._record, uuid, dom_uuid)
            self._host.call('setMetadata', dom.setMetadata,
                            self._lv.VIR_DOMAIN_METADATA_ELEMENT,
                            vconfig.metadata_xml(metadata), 'ca', vconfig.METADATA_NS,
                            self._lv.VIR_DOMAIN_AFFECT_LIVE)
            self._domains.metadata_set(uuid)
        xml = self._domains.take_restored(uuid)
        if callable(xml):
            xml = xml()
        if xml is None:
            dom = self._domains.handle_or_raise(uuid)
            xml = self._host.call('XMLDesc', dom.XMLDesc, 0)
        # The persistent definition gets a fresh generation id at its next cold start.
        root = ET.fromstring(xml)
        genid = root.find('genid')
        if genid is not None:
            genid.text = None
        epoch = self._host.epoch
        dom = self._host.call('defineXML', self._host.conn().defineXML,
                              ET.tostring(root, encoding='unicode'), epoch=epoch)
        self._domains.cache(uuid, epoch, dom)
