"""The libvirt driver's warm-boot half: spares (started, saved, removed) and restores.

A spare is a transient domain of its own identity (``createXML``: one call), saved to a file
once its guest is ready (``saveFlags``; the domain goes) with the XML libvirt stored in the
image read back once (``saveImageGetXMLDesc``). A warm boot is ONE call, ``restoreFlags``,
with that XML carrying the instance's metadata, disk, console log and identity socket: the
guest runs on, ready at once. The job then makes the domain persistent (``defineXML``) so
that stop and start keep it, as they keep a cold instance's.
"""
import base64
import dataclasses
import importlib
import json
import logging
import os
import socket
import time
import xml.etree.ElementTree as ET

from agent import durable
from agent import exception
from agent import spec as specmod
from agent.virt.libvirt import config as vconfig
from agent.virt.libvirt import console as vconsole

LOG = logging.getLogger(__name__)

MAX_SOCKET_PATH = 107          # sun_path
AGENT_TIMEOUT = 10             # seconds libvirt waits for one guest-agent answer
RESTORED_AS = 'restored-as'    # in a warm instance's directory: its domain's uuid


def _open_and_write(path: str, line: bytes, timeout: float = 5.0) -> socket.socket:
    """Connect to the identity port's socket and write ``line``; the connection is returned
    open: QEMU drops what it has not yet handed to the guest when the host side closes (seen
    right after a restore, before the guest ran), so it stays open until the domain goes."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line)
    except OSError:
        sock.close()
        raise
    return sock


class WarmDomains:
    """Mixed into ``LibvirtDriver`` (its host, dirs, node and domain maps)."""

    def domain_name(self, uuid: str) -> str:
        return vconfig.domain_name(self._dom_of.get(uuid, uuid))

    def identity_socket(self, uuid: str) -> str:
        """The host side of instance ``uuid``'s identity port."""
        path = os.path.join(self._options.identity_socket_dir, uuid + '.sock')
        if len(path) > MAX_SOCKET_PATH:
            raise exception.ConfigError(reason='%s: longer than a unix socket path may be; '
                                               'use a shorter [libvirt] identity_socket_dir'
                                               % path)
        return path

    def remove_identity_socket(self, uuid: str) -> None:
        """Close the connection and remove the socket file QEMU left."""
        self.close_identity(uuid)
        try:
            os.unlink(self.identity_socket(uuid))
        except FileNotFoundError:
            pass

    def spawn_spare(self, spec: specmod.BootSpec, disks: tuple, pool: str) -> None:
        conn = self.host.conn()
        config = dataclasses.replace(
            self._guest_config(spec, disks), genid=True,
            identity_socket=self.identity_socket(spec.uuid),
            metadata=(('host', self._node), ('role', 'spare'), ('pool', pool),
                      ('created', '%.3f' % time.time())))
        self._dirs.create(spec.uuid)
        os.makedirs(self._options.identity_socket_dir, mode=0o700, exist_ok=True)
        self._spares.add(spec.uuid)
        try:
            self.host.call('createXML', conn.createXML, config.to_xml(), 0)
        except exception.AgentError:
            self._spares.discard(spec.uuid)
            raise

    def save_spare(self, uuid: str, path: str) -> str:
        conn = self.host.conn()
        dom = self.host.call('lookupByUUIDString', conn.lookupByUUIDString, uuid)
        self.host.call('saveFlags', dom.saveFlags, path, None, 0)
        self._spares.discard(uuid)
        return self.host.call('saveImageGetXMLDesc', conn.saveImageGetXMLDesc, path, 0)

    def remove_spare(self, uuid: str) -> None:
        self._spares.discard(uuid)
        try:
            dom = self.host.call('lookupByUUIDString', self.host.conn().lookupByUUIDString,
                                 uuid)
        except exception.DomainNotFound:
            self.remove_identity_socket(uuid)
            return
        meta = vconfig.parse_metadata(self.host.call('XMLDesc', dom.XMLDesc, 0)) or {}
        if meta.get('role') != 'spare' or meta.get('host') != self._node \
                or meta.get('uuid') != uuid:
            LOG.warning('[spare: %s] the domain with this uuid is not a spare of ours: left '
                        'alone', uuid)
            return
        try:
            self.host.call('destroy', dom.destroy)
        except (exception.DomainStateConflict, exception.DomainNotFound):
            pass
        self.remove_identity_socket(uuid)

    def restore_warm(self, spec: specmod.BootSpec, spare, disks: tuple) -> None:
        conn = self.host.conn()
        epoch = self.host.epoch
        metadata = (('uuid', spec.uuid), ('name', spec.name), ('host', self._node),
                    ('spare', spare.uuid), ('pool', spare.pool),
                    ('created', '%.3f' % time.time()), ('vcpus', str(spec.vcpus)),
                    ('memory_mb', str(spec.memory_mb)), ('disk_gb', str(spec.disk_gb)))
        xml = vconfig.restore_xml(
            spare.xml, spec.name, metadata,
            {'vd' + chr(ord('a') + i): d.path for i, d in enumerate(disks)},
            os.path.join(self.instance_dir(spec.uuid), vconsole.CONSOLE_LOG),
            self.identity_socket(spec.uuid))
        self._dirs.create(spec.uuid)
        self._write_restored_as(spec.uuid, spare.uuid)
        self._map(spec.uuid, spare.uuid)      # before: the restore's events are the instance's
        try:
            self.host.call('restoreFlags', conn.restoreFlags, spare.image, xml, 0, epoch=epoch)
        except exception.HypervisorUnavailable:
            raise                             # may or may not have happened: settled later
        except exception.AgentError:
            self._forget(spare.uuid)
            self._remove_files(spec.uuid)
            raise
        self._restored[spec.uuid] = xml

    def _write_restored_as(self, uuid: str, dom_uuid: str) -> None:
        self._wq.execute('instance.record', durable.write_file,
                         os.path.join(self.instance_dir(uuid), RESTORED_AS), dom_uuid + '\n')

    def restored_as(self, uuid: str) -> str | None:
        """The libvirt uuid a warm instance was restored as, from its marked directory."""
        try:
            with open(os.path.join(self.instance_dir(uuid), RESTORED_AS)) as f:
                return f.read(64).strip()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def persist(self, uuid: str) -> None:
        xml = self._restored.pop(uuid, None)
        if xml is None:
            dom = self._ours_or_raise(uuid)
            xml = self.host.call('XMLDesc', dom.XMLDesc, 0)
        # The persistent definition gets a fresh generation id at its next cold start.
        root = ET.fromstring(xml)
        genid = root.find('genid')
        if genid is not None:
            genid.text = None
        epoch = self.host.epoch
        dom = self.host.call('defineXML', self.host.conn().defineXML,
                             ET.tostring(root, encoding='unicode'), epoch=epoch)
        self._domains[uuid] = (epoch, dom)

    def send_identity(self, uuid: str, identity: dict) -> None:
        line = (json.dumps(identity, sort_keys=True) + '\n').encode()
        self.close_identity(uuid)
        try:
            self._identity[uuid] = self._wq.execute(
                'identity.write', _open_and_write, self.identity_socket(uuid), line)
        except OSError as exc:
            raise exception.AgentError('identity port of %s: %s' % (uuid, exc)) from None

    # -- a cloud image's guest agent (qemu-guest-agent), through libvirt -------------------
    def set_guest_time(self, uuid: str) -> None:
        """Set the guest's clock to the host's (qemu-ga guest-set-time): 1 RPC. A restored
        guest's clock stood still while it was saved."""
        dom = self._ours_or_raise(uuid)
        now = time.time_ns()
        self.host.call('setTime', dom.setTime,
                       {'seconds': now // 10 ** 9, 'nseconds': now % 10 ** 9}, 0)

    def guest_exec(self, uuid: str, argv: list[str]) -> int:
        """Start ``argv`` in the guest (qemu-ga guest-exec, output captured): its pid.
        1 RPC. The arguments are passed as a list: no shell parses them."""
        answer = self._agent_command(uuid, 'guest-exec', {'path': argv[0], 'arg': argv[1:],
                                                          'capture-output': True})
        return int(answer['pid'])

    def guest_exec_status(self, uuid: str, pid: int) -> dict | None:
        """None while ``pid`` runs; then {exitcode, out, err} (decoded, at most 4 KiB each).
        1 RPC."""
        answer = self._agent_command(uuid, 'guest-exec-status', {'pid': pid})
        if not answer.get('exited'):
            return None
        out = {}
        for key in ('out-data', 'err-data'):
            try:
                out[key[:3]] = base64.b64decode(answer.get(key, '')).decode('utf-8', 'replace')
            except ValueError:
                out[key[:3]] = ''
        return {'exitcode': answer.get('exitcode', answer.get('signal', -1)),
                'out': out['out'][-4096:], 'err': out['err'][-4096:]}

    def _agent_command(self, uuid: str, command: str, arguments: dict) -> dict:
        if uuid in self._spares:        # a spare being made (its cloud-init's first boot)
            dom = self.host.call('lookupByUUIDString', self.host.conn().lookupByUUIDString,
                                 uuid)
        else:
            dom = self._ours_or_raise(uuid)
        request = json.dumps({'execute': command, 'arguments': arguments})
        # The guest agent's pass-through lives in libvirt_qemu (the fake has it in itself).
        send = getattr(self._lv, 'qemuAgentCommand', None) \
            or importlib.import_module('libvirt_qemu').qemuAgentCommand
        reply = self.host.call(command, send, dom, request, AGENT_TIMEOUT, 0)
        try:
            return json.loads(reply)['return']
        except (ValueError, KeyError, TypeError):
            raise exception.HypervisorError(op=command, reason='a malformed answer from the '
                                                               'guest agent') from None

    def close_identity(self, uuid: str) -> None:
        """Close the identity connection of ``uuid``, if one is open."""
        sock = self._identity.pop(uuid, None)
        if sock is not None:
            sock.close()
