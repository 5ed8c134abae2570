"""A stateful fake of the libvirt-python module for unit tests.

One ``Hypervisor`` (module global, reset per test) keeps the domains, so it outlives connections
like libvirtd does. Domains change state on API calls and emit lifecycle events to every open
connection's callbacks, delivered by ``virEventRunDefaultImpl`` on the caller's event thread as
with real libvirt. Every API call is recorded in ``Hypervisor.calls`` (independent of the
agent's own counters); ``fail_next`` injects libvirt errors; ``restart`` drops connections.
"""
import base64
import builtins
import json
import os
import queue
import socket
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET

# --- constants (values as in libvirt) ----------------------------------------------------
VIR_DOMAIN_EVENT_ID_LIFECYCLE = 0
VIR_DOMAIN_EVENT_ID_REBOOT = 1
VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE = 18
VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED = 1
VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED = 2
VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED = 1
VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL = 2
VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN = 1
VIR_DOMAIN_REBOOT_ACPI_POWER_BTN = 1
VIR_DOMAIN_EVENT_DEFINED = 0
VIR_DOMAIN_EVENT_UNDEFINED = 1
VIR_DOMAIN_EVENT_STARTED = 2
VIR_DOMAIN_EVENT_SUSPENDED = 3
VIR_DOMAIN_EVENT_RESUMED = 4
VIR_DOMAIN_EVENT_STOPPED = 5
VIR_DOMAIN_EVENT_SHUTDOWN = 6
VIR_DOMAIN_EVENT_PMSUSPENDED = 7
VIR_DOMAIN_EVENT_CRASHED = 8
VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN = 0
VIR_DOMAIN_EVENT_STOPPED_DESTROYED = 1
VIR_DOMAIN_EVENT_STOPPED_CRASHED = 2
VIR_DOMAIN_EVENT_STOPPED_FAILED = 5
VIR_DOMAIN_EVENT_STOPPED_SAVED = 4
VIR_DOMAIN_EVENT_STARTED_RESTORED = 2
VIR_DOMAIN_EVENT_SHUTDOWN_GUEST = 1
VIR_DOMAIN_EVENT_SHUTDOWN_HOST = 2

VIR_DOMAIN_EVENT_SUSPENDED_PAUSED = 0
VIR_DOMAIN_EVENT_RESUMED_UNPAUSED = 0
VIR_DOMAIN_AFFECT_LIVE = 1
VIR_DOMAIN_AFFECT_CONFIG = 2
VIR_DOMAIN_METADATA_ELEMENT = 2

VIR_DOMAIN_NOSTATE = 0
VIR_DOMAIN_RUNNING = 1
VIR_DOMAIN_BLOCKED = 2
VIR_DOMAIN_PAUSED = 3
VIR_DOMAIN_SHUTDOWN = 4
VIR_DOMAIN_SHUTOFF = 5
VIR_DOMAIN_CRASHED = 6
VIR_DOMAIN_PMSUSPENDED = 7

VIR_DOMAIN_STATS_STATE = 1
VIR_NODE_MEMORY_STATS_ALL_CELLS = -1
VIR_CONNECT_CLOSE_REASON_EOF = 1

VIR_ERR_INTERNAL_ERROR = 1
VIR_ERR_NO_CONNECT = 5
VIR_ERR_INVALID_CONN = 6
VIR_ERR_SYSTEM_ERROR = 38
VIR_ERR_RPC = 39
VIR_ERR_OPERATION_INVALID = 55
VIR_ERR_NO_DOMAIN = 42
VIR_ERR_XML_ERROR = 27
VIR_ERR_OPERATION_FAILED = 9
VIR_ERR_CONFIG_UNSUPPORTED = 67

CAPABILITIES = """<capabilities><host><cpu><arch>x86_64</arch></cpu></host>
<guest><os_type>hvm</os_type><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>
</capabilities>"""


class libvirtError(Exception):
    def __init__(self, msg, code=VIR_ERR_INTERNAL_ERROR, int1=-1):
        super().__init__(msg)
        self._code = code
        self._int1 = int1

    def get_error_code(self):
        return self._code

    def get_error_int1(self):
        return self._int1

    def get_error_message(self):
        return str(self)


# --- the event loop ------------------------------------------------------------------------
_events: queue.SimpleQueue = queue.SimpleQueue()
_delivering = threading.Event()
_delivering.set()


def hold_events() -> None:
    """Queue events without delivering them (as when libvirt's event thread is busy)."""
    _delivering.clear()


def release_events() -> None:
    _delivering.set()


def virEventRegisterDefaultImpl():
    return 0


def registerErrorHandler(handler, ctx):
    return 0


def virEventRunDefaultImpl():
    """Run one pending callback (blocks until there is one), like one loop iteration."""
    fn, args = _events.get()
    _delivering.wait()
    fn(*args)
    return 0


# --- the hypervisor --------------------------------------------------------------------------
class Hypervisor:
    def __init__(self):
        self.domains: dict[str, 'Domain'] = {}   # uuid -> Domain
        self.connections: list['Connection'] = []
        self.calls: list[str] = []
        self.fail_next: dict[str, libvirtError] = {}
        self.gates: dict[str, threading.Event] = {}   # a call waits until its gate is set
        self.late_gates: dict[str, threading.Event] = {}   # answer now, return it later
        self.down = False
        self.lock = threading.Lock()
        # uuids of guests that ignore the ACPI power button (still booting, or no acpid)
        self.acpi_ignored: set[str] = set()
        self.auto_ready = False    # every started guest opens its agent channel at once
        self.identity_acks = True  # guests answer what they read on their identity port
        self.identity_cond = threading.Condition()
        # The guest agents (qemu-ga): what they were asked, and how guest-exec ends
        self.guest_times: dict[str, dict] = {}      # uuid -> the last setTime's time
        self.guest_execs: dict[str, list] = {}      # uuid -> [guest-exec arguments]
        self.exec_polls = 2                         # guest-exec-status answers until exited
        self.exec_exitcode = 0

    def record(self, name: str) -> None:
        with self.lock:
            self.calls.append(name)
            err = self.fail_next.pop(name, None)
            gate = self.gates.get(name)
        if gate is not None:
            gate.wait(10)
        if err is not None:
            raise err

    def late(self, name: str, answer):
        """Hold an answer already made until its late gate opens (a stale listing)."""
        gate = self.late_gates.get(name)
        if gate is not None:
            gate.wait(10)
        return answer

    def emit(self, dom: 'Domain', event: int, detail: int) -> None:
        for conn in list(self.connections):
            for cb, opaque in list(conn.lifecycle_callbacks):
                _events.put((cb, (conn, dom, event, detail, opaque)))

    def emit_reboot(self, dom: 'Domain') -> None:
        for conn in list(self.connections):
            for cb, opaque in list(conn.reboot_callbacks):
                _events.put((cb, (conn, dom, opaque)))

    def emit_agent(self, dom: 'Domain', connected: bool, reason: int) -> None:
        """The agent channel's state changes (libvirt keeps it in the live XML too)."""
        dom.agent = 'connected' if connected else 'disconnected'
        state = (VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED if connected
                 else VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_DISCONNECTED)
        for conn in list(self.connections):
            for cb, opaque in list(conn.agent_callbacks):
                _events.put((cb, (conn, dom, state, reason, opaque)))

    def guest_agent(self, uuid: str, connected: bool = True) -> None:
        """The guest opens (or closes) its agent channel: it is ready (or no longer)."""
        self.emit_agent(self.domains[uuid], connected,
                        VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL)

    # what happens outside the agent's calls
    def guest_poweroff(self, uuid: str) -> None:
        dom = self.domains[uuid]
        self.emit(dom, VIR_DOMAIN_EVENT_SHUTDOWN, VIR_DOMAIN_EVENT_SHUTDOWN_GUEST)
        dom._stopped(VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)

    def restart(self, stay_down: bool = False) -> None:
        """libvirtd goes away: every connection is closed (close callbacks fire)."""
        self.down = stay_down
        for conn in list(self.connections):
            conn.alive = False
            if conn.close_callback:
                cb, opaque = conn.close_callback
                _events.put((cb, (conn, VIR_CONNECT_CLOSE_REASON_EOF, opaque)))
        self.connections.clear()


hypervisor = Hypervisor()


def reset() -> Hypervisor:
    global hypervisor
    hypervisor = Hypervisor()
    release_events()
    return hypervisor


def open(uri):   # noqa: A001 - the libvirt API name
    hypervisor.record('open')
    if hypervisor.down:
        raise libvirtError('Failed to connect socket: Connection refused', VIR_ERR_SYSTEM_ERROR)
    conn = Connection(hypervisor, uri)
    hypervisor.connections.append(conn)
    return conn


class Connection:
    def __init__(self, hv: Hypervisor, uri: str):
        self.hv = hv
        self.uri = uri
        self.alive = True
        self.lifecycle_callbacks = []
        self.reboot_callbacks = []
        self.agent_callbacks = []
        self.close_callback = None

    def _call(self, name: str) -> None:
        if not self.alive:
            raise libvirtError('internal error: client socket is closed', VIR_ERR_INTERNAL_ERROR)
        self.hv.record(name)

    def isAlive(self):
        return self.alive

    def registerCloseCallback(self, cb, opaque):
        self._call('registerCloseCallback')
        self.close_callback = (cb, opaque)

    def domainEventRegisterAny(self, dom, event_id, cb, opaque):
        self._call('domainEventRegisterAny')
        callbacks = {VIR_DOMAIN_EVENT_ID_LIFECYCLE: self.lifecycle_callbacks,
                     VIR_DOMAIN_EVENT_ID_REBOOT: self.reboot_callbacks,
                     VIR_DOMAIN_EVENT_ID_AGENT_LIFECYCLE: self.agent_callbacks}[event_id]
        callbacks.append((cb, opaque))
        return len(self.lifecycle_callbacks) + len(self.reboot_callbacks) + len(
            self.agent_callbacks)

    def setKeepAlive(self, interval, count):
        self._call('setKeepAlive')

    def close(self):
        self.alive = False
        if self in self.hv.connections:
            self.hv.connections.remove(self)

    def getCapabilities(self):
        self._call('getCapabilities')
        return CAPABILITIES

    def getInfo(self):
        self._call('getInfo')
        return ['x86_64', 6000, 8, 2000, 1, 1, 4, 2]

    def getMemoryStats(self, cell, flags):
        self._call('getMemoryStats')
        return {'total': 32 * 1024 * 1024, 'free': 16 * 1024 * 1024}

    def getHostname(self):
        self._call('getHostname')
        return 'fakehost'

    def getLibVersion(self):
        self._call('getLibVersion')
        return 9000000

    def getVersion(self):
        self._call('getVersion')
        return 7002000

    def defineXML(self, xml):
        self._call('defineXML')
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise libvirtError('XML error: %s' % exc, VIR_ERR_XML_ERROR) from None
        if root.get('type') not in ('qemu', 'kvm'):
            raise libvirtError('unsupported domain type', VIR_ERR_XML_ERROR)
        uuid, name = root.findtext('uuid'), root.findtext('name')
        for other in self.hv.domains.values():
            if other.name_ == name and other.uuid != uuid:
                raise libvirtError("domain '%s' already exists with uuid %s" % (name, other.uuid),
                                   VIR_ERR_OPERATION_FAILED)
        dom = self.hv.domains.get(uuid)
        if dom is not None and dom.name_ != name:     # libvirt's own refusal
            raise libvirtError("operation failed: domain '%s' is already defined with uuid %s"
                               % (dom.name_, uuid), VIR_ERR_OPERATION_FAILED)
        detail = 1 if dom is not None else 0       # DEFINED_UPDATED / DEFINED_ADDED
        if dom is None:
            dom = self.hv.domains[uuid] = Domain(self, uuid, name, xml)
        if dom.run_state in (VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED):
            dom.next_xml = xml          # the live definition stays until it stops
        else:
            dom.xml = xml
        dom.transient = False
        self.hv.emit(dom, VIR_DOMAIN_EVENT_DEFINED, detail)
        return dom

    def createXML(self, xml, flags):
        """A transient domain, started: it is gone once it stops."""
        self._call('createXML')
        root = ET.fromstring(xml)
        uuid, name = root.findtext('uuid'), root.findtext('name')
        if uuid in self.hv.domains:
            raise libvirtError("operation failed: domain '%s' already exists" % name,
                               VIR_ERR_OPERATION_FAILED)
        dom = self.hv.domains[uuid] = Domain(self, uuid, name, xml)
        dom.transient = True
        dom._start_state(VIR_DOMAIN_EVENT_STARTED, 0)
        return Domain(self, uuid, name, xml, shared=dom)

    def saveImageGetXMLDesc(self, path, flags):
        self._call('saveImageGetXMLDesc')
        with builtins.open(path) as f:
            return json.load(f)['xml']

    def restoreFlags(self, path, dxml, flags):
        """Like libvirt: the XML must keep the saved uuid, name and genid; the guest runs on
        (its agent channel connected, as it was when saved)."""
        self._call('restoreFlags')
        try:
            with builtins.open(path) as f:
                saved = ET.fromstring(json.load(f)['xml'])
        except FileNotFoundError:
            raise libvirtError("Failed to open file '%s': No such file or directory" % path,
                               VIR_ERR_SYSTEM_ERROR, int1=2) from None
        root = ET.fromstring(dxml)
        for field in ('uuid', 'name', 'genid'):
            if root.findtext(field) != saved.findtext(field):
                raise libvirtError('unsupported configuration: Target domain %s does not match '
                                   'source' % field, VIR_ERR_CONFIG_UNSUPPORTED)
        uuid, name = root.findtext('uuid'), root.findtext('name')
        dom = self.hv.domains.get(uuid)
        if dom is not None and dom.run_state == VIR_DOMAIN_RUNNING:
            raise libvirtError("operation invalid: domain '%s' is already active" % name,
                               VIR_ERR_OPERATION_INVALID)
        if dom is None:
            dom = self.hv.domains[uuid] = Domain(self, uuid, name, dxml)
            dom.transient = True
        dom.xml = dxml
        dom._start_state(VIR_DOMAIN_EVENT_STARTED, VIR_DOMAIN_EVENT_STARTED_RESTORED)
        self.hv.emit_agent(dom, True, VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL)
        return 0

    def lookupByUUIDString(self, uuid):
        self._call('lookupByUUIDString')
        dom = self.hv.domains.get(uuid)
        if dom is None:
            raise libvirtError("Domain not found: no domain with matching uuid '%s'" % uuid,
                               VIR_ERR_NO_DOMAIN)
        return Domain(self, dom.uuid, dom.name_, dom.xml, shared=dom)

    def getAllDomainStats(self, stats, flags):
        self._call('getAllDomainStats')
        return self.hv.late('getAllDomainStats', [
            (Domain(self, d.uuid, d.name_, d.xml, shared=d),
             {'state.state': d.run_state, 'state.reason': 0})
            for d in list(self.hv.domains.values())])


class Domain:
    """A domain handle; handles from different calls share the hypervisor's state object."""

    def __init__(self, conn: Connection, uuid: str, name: str, xml: str, shared=None):
        self._conn = conn
        self.uuid = uuid
        self.name_ = name
        self._shared = shared
        if shared is None:
            self.xml = xml
            self.run_state = VIR_DOMAIN_SHUTOFF
            self.agent = None     # agent channel: None (not running) | connected | disconnected
            self.transient = False

    def _dom(self) -> 'Domain':
        return self._shared or self

    def _call(self, name: str) -> 'Domain':
        self._conn._call(name)
        dom = self._conn.hv.domains.get(self.uuid)
        if dom is None:
            raise libvirtError("Domain not found: '%s'" % self.uuid, VIR_ERR_NO_DOMAIN)
        return dom

    # local, no RPC in real libvirt
    def UUIDString(self):
        return self.uuid

    def name(self):
        return self.name_

    def XMLDesc(self, flags=0):
        """The definition; a running domain's shows its agent channel's state (live XML)."""
        dom = self._call('XMLDesc')
        if dom.agent is None:
            return dom.xml
        return dom.xml.replace("name=\"org.qemu.guest_agent.0\"",
                               "name=\"org.qemu.guest_agent.0\" state=\"%s\"" % dom.agent)

    def state(self, flags=0):
        return [self._call('state').run_state, 0]

    def create(self):
        """libvirt-python's create(): two RPCs (the create, then a lookup for the id)."""
        self._start('create')
        self._conn._call('lookupByUUIDString')
        return 0

    def _start(self, name: str) -> int:
        dom = self._call(name)
        if dom.run_state == VIR_DOMAIN_RUNNING:
            raise libvirtError('Requested operation is not valid: domain is already running',
                               VIR_ERR_OPERATION_INVALID)
        dom._start_state(VIR_DOMAIN_EVENT_STARTED, 0)
        if not self._conn.alive:    # libvirtd went away while the call was in flight
            raise libvirtError('Cannot recv data: Connection reset by peer', VIR_ERR_SYSTEM_ERROR)
        return 0

    def _start_state(self, event: int, detail: int) -> None:
        """(On the shared state object.) Running now, with its events."""
        hv = self._conn.hv
        self.run_state = VIR_DOMAIN_RUNNING
        self._listen_identity()
        hv.emit_agent(self, False, VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_DOMAIN_STARTED)
        hv.emit(self, VIR_DOMAIN_EVENT_RESUMED, 0)
        hv.emit(self, event, detail)
        if hv.auto_ready and detail != VIR_DOMAIN_EVENT_STARTED_RESTORED:
            hv.emit_agent(self, True, VIR_CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_REASON_CHANNEL)

    def _listen_identity(self) -> None:
        """QEMU binds the host side of an identity port (``<source mode='bind'>``); the
        guest's reader on it starts."""
        for channel in ET.fromstring(self.xml).findall('devices/channel'):
            source = channel.find('source')
            if source is not None and source.get('mode') == 'bind':
                self.identity = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    os.unlink(source.get('path'))      # as QEMU does before it binds
                except FileNotFoundError:
                    pass
                self.identity.bind(source.get('path'))
                self.identity.listen(4)
                self.identity_path = source.get('path')
                self.identity_seen = []          # the lines this QEMU's guest read
                self.identity_conns = []
                threading.Thread(target=self._guest_identity, args=(self.identity,),
                                 daemon=True).start()

    def _guest_identity(self, listener) -> None:
        """The guest's reader: each line the host writes is read, and answered (its clock
        set) unless the hypervisor's guests do not answer (``identity_acks``)."""
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:           # QEMU exited
                return
            self.identity_conns.append(conn)
            threading.Thread(target=self._guest_identity_lines, args=(conn,),
                             daemon=True).start()

    def _guest_identity_lines(self, conn) -> None:
        hv = self._conn.hv
        buf = b''
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b'\n' in buf:
                    line, buf = buf.split(b'\n', 1)
                    with hv.identity_cond:
                        self.identity_seen.append(line.decode())
                        hv.identity_cond.notify_all()
                    if hv.identity_acks:
                        self.ack_identity(conn)

    def ack_identity(self, conn=None, line: bytes | None = None) -> None:
        """The guest answers the last line it read (or writes ``line``) on the port."""
        conn = conn or self.identity_conns[-1]
        if line is None:
            seq = json.loads(self.identity_seen[-1])['seq']
            line = json.dumps({'ack': seq, 'clock': time.time()}).encode() + b'\n'
        try:
            conn.sendall(line)
        except OSError:
            pass

    def identity_lines(self, count: int = 1, timeout: float = 5.0) -> list[str]:
        """What the guest read on the identity port since its QEMU started, once it read at
        least ``count`` lines."""
        hv = self._conn.hv

        def seen():      # none before its QEMU bound the port (it may be listed already)
            return getattr(self, 'identity_seen', [])
        with hv.identity_cond:
            if not hv.identity_cond.wait_for(lambda: len(seen()) >= count, timeout):
                raise AssertionError('the guest read %d identity lines, not %d'
                                     % (len(seen()), count))
            return list(seen())

    def _stopped(self, detail: int) -> None:
        """(On the shared state object.) Stopped; a transient domain is gone with it."""
        self.run_state = VIR_DOMAIN_SHUTOFF
        self.agent = None
        if getattr(self, 'next_xml', None) is not None:      # a definition made meanwhile
            self.xml, self.next_xml = self.next_xml, None
        if getattr(self, 'identity', None) is not None:     # QEMU exits: its socket goes
            for sock in [self.identity] + self.identity_conns:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self.identity = None
        self._conn.hv.emit(self, VIR_DOMAIN_EVENT_STOPPED, detail)
        if self.transient:
            self._conn.hv.domains.pop(self.uuid, None)

    def saveFlags(self, path, dxml, flags):
        """The memory image: here the live XML (with a generation id filled in)."""
        dom = self._running('saveFlags')
        xml = dom.xml.replace('<genid />', '<genid>%s</genid>' % uuidlib.uuid4())
        with builtins.open(path, 'w') as f:
            json.dump({'xml': xml}, f)
        dom._stopped(VIR_DOMAIN_EVENT_STOPPED_SAVED)
        return 0

    def createWithFlags(self, flags):
        return self._start('createWithFlags')

    def _running(self, name: str) -> 'Domain':
        dom = self._call(name)
        if dom.run_state != VIR_DOMAIN_RUNNING:
            raise libvirtError('Requested operation is not valid: domain is not running',
                               VIR_ERR_OPERATION_INVALID)
        return dom

    def shutdownFlags(self, flags):
        """The ACPI power button: a guest that handles it powers off."""
        self._running('shutdownFlags')
        if self.uuid not in self._conn.hv.acpi_ignored:
            self._conn.hv.guest_poweroff(self.uuid)
        return 0

    def reboot(self, flags):
        """The ACPI power button with libvirt's restart: a guest that handles it resets."""
        dom = self._running('reboot')
        if self.uuid not in self._conn.hv.acpi_ignored:
            self._conn.hv.emit_reboot(dom)
        return 0

    def reset(self, flags):
        dom = self._running('reset')
        self._conn.hv.emit_reboot(dom)
        return 0

    def suspend(self):
        dom = self._running('suspend')
        dom.run_state = VIR_DOMAIN_PAUSED
        self._conn.hv.emit(dom, VIR_DOMAIN_EVENT_SUSPENDED, VIR_DOMAIN_EVENT_SUSPENDED_PAUSED)
        return 0

    def resume(self):
        dom = self._call('resume')
        if dom.run_state != VIR_DOMAIN_PAUSED:
            raise libvirtError('Requested operation is not valid: domain is not paused',
                               VIR_ERR_OPERATION_INVALID)
        dom.run_state = VIR_DOMAIN_RUNNING
        self._conn.hv.emit(dom, VIR_DOMAIN_EVENT_RESUMED, VIR_DOMAIN_EVENT_RESUMED_UNPAUSED)
        return 0

    def setMetadata(self, type, metadata, key, uri, flags):   # noqa: A002 - libvirt's name
        """The live definition's metadata element of namespace ``uri`` is replaced."""
        dom = self._call('setMetadata')
        if type != VIR_DOMAIN_METADATA_ELEMENT or flags != VIR_DOMAIN_AFFECT_LIVE:
            raise libvirtError('unsupported flags', VIR_ERR_CONFIG_UNSUPPORTED)
        if dom.run_state == VIR_DOMAIN_SHUTOFF:
            raise libvirtError('Requested operation is not valid: domain is not running',
                               VIR_ERR_OPERATION_INVALID)
        root = ET.fromstring(dom.xml)
        meta = root.find('metadata')
        if meta is None:
            meta = ET.SubElement(root, 'metadata')
        for old in [e for e in meta if e.tag.startswith('{%s}' % uri)]:
            meta.remove(old)
        new = ET.fromstring(metadata)
        if new.tag.startswith('{'):
            raise libvirtError('internal error: failed to create a new XML namespace',
                               VIR_ERR_INTERNAL_ERROR)
        new.tag = '{%s}%s' % (uri, new.tag)     # the root only, as libvirt does
        meta.append(new)
        dom.xml = ET.tostring(root, encoding='unicode')
        return 0

    def destroy(self):
        dom = self._call('destroy')
        if dom.run_state not in (VIR_DOMAIN_RUNNING, VIR_DOMAIN_PAUSED):
            raise libvirtError('Requested operation is not valid: domain is not running',
                               VIR_ERR_OPERATION_INVALID)
        self._conn.hv.emit(dom, VIR_DOMAIN_EVENT_SHUTDOWN, VIR_DOMAIN_EVENT_SHUTDOWN_HOST)
        dom._stopped(VIR_DOMAIN_EVENT_STOPPED_DESTROYED)
        return 0

    def undefine(self):
        dom = self._call('undefine')
        del self._conn.hv.domains[self.uuid]
        self._conn.hv.emit(dom, VIR_DOMAIN_EVENT_UNDEFINED, 0)
        return 0

    def setTime(self, time=None, flags=0):
        dom = self._running('setTime')
        dom._conn.hv.guest_times[dom.uuid] = dict(time or {})
        return 0


def qemuAgentCommand(domain, cmd, timeout, flags):
    """libvirt_qemu's pass-through to the guest agent: guest-exec and guest-exec-status."""
    dom = domain._running('qemuAgentCommand')
    hv = dom._conn.hv
    request = json.loads(cmd)
    if dom.agent != 'connected':
        raise libvirtError('Guest agent is not responding: QEMU guest agent is not connected',
                           VIR_ERR_OPERATION_INVALID)
    if request['execute'] == 'guest-exec':
        runs = hv.guest_execs.setdefault(dom.uuid, [])
        runs.append(request['arguments'])
        dom.exec_polls = hv.exec_polls
        return json.dumps({'return': {'pid': 1000 + len(runs)}})
    if request['execute'] == 'guest-exec-status':
        dom.exec_polls -= 1
        if dom.exec_polls > 0:
            return json.dumps({'return': {'exited': False}})
        err = base64.b64encode(b'cloud-init: boom' if hv.exec_exitcode else b'').decode()
        return json.dumps({'return': {'exited': True, 'exitcode': hv.exec_exitcode,
                                      'out-data': '', 'err-data': err}})
    raise libvirtError('unsupported guest agent command', VIR_ERR_OPERATION_INVALID)
