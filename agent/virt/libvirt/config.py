"""Domain XML built from objects with ElementTree: never by string formatting.

``GuestConfig.to_xml()`` is the only way the agent makes domain XML; ``parse_metadata`` reads back
what the agent stored, which is how the agent recognises its own domains.
"""
import dataclasses
import xml.etree.ElementTree as ET

METADATA_NS = 'http://compute-agent.org/xmlns/instance/1.0'
QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0'
DOMAIN_PREFIX = 'ca-'
# The guest-agent channel: a guest that opens it is ready (libvirt's agent-lifecycle event).
# The agent never talks on it; it only watches whether the guest holds it open.
AGENT_CHANNEL = 'org.qemu.guest_agent.0'
# Warm boots: a guest restored from a saved spare learns who it is on this port (the agent
# writes one JSON line on its host-side socket after the restore).
IDENTITY_CHANNEL = 'org.compute-agent.identity.0'
RNG_BYTES_PER_S = 1024        # what a guest may read from the host's entropy (virtio-rng)


def domain_name(uuid: str) -> str:
    """libvirt domain names are derived from the uuid, so two instances can never clash."""
    return DOMAIN_PREFIX + uuid


@dataclasses.dataclass(frozen=True)
class DiskConfig:
    """One disk of a domain: source path and type, format, target, transient or not."""
    path: str
    format: str = 'raw'          # raw | qcow2
    target: str = 'vda'
    source_type: str = 'file'    # file | block
    transient: bool = False      # writes go to a throw-away overlay; the source is never written
    backing: tuple[str, str] | None = None   # (image, format) under a qcow2 overlay
    readonly: bool = False       # the guest only reads it (a seed): QEMU reads it by its group


USER_NIC_FIRST_SLOT = 0x10      # user NICs take slots 0x10.. (agent.spec.MAX_USER_NICS of them)


@dataclasses.dataclass(frozen=True)
class NicConfig:
    """A guest NIC. ``user`` NICs are isolated: QEMU's slirp with ``restrict=on``, so the guest
    reaches neither the host (slirp maps 10.0.2.2 to the host's 127.0.0.1) nor any network.
    libvirt 9.0's ``<interface type='user'>`` cannot ask for that (and its passt backend maps
    the gateway to the host too), so they are QEMU's own netdev and device, appended to QEMU's
    command line after libvirt's devices (libvirt marks such a domain as tainted)."""

    type: str                    # user | bridge
    mac: str
    bridge: str | None = None
    model: str = 'virtio'


@dataclasses.dataclass(frozen=True)
class GuestConfig:
    """Everything a domain definition holds, already validated."""

    uuid: str
    name: str                    # the display name, kept in the metadata and title
    virt_type: str               # kvm | qemu
    arch: str
    vcpus: int
    memory_mb: int
    console_log: str
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: tuple[DiskConfig, ...] = ()
    nics: tuple[NicConfig, ...] = ()
    cpu_mode: str = 'none'
    tcg_tb_cache_mb: int = 0
    metadata: tuple[tuple[str, str], ...] = ()   # extra (key, value) pairs for the metadata
    genid: bool = False          # a VM generation id (libvirt changes it at every restore)
    rng: bool = False            # a virtio-rng device fed from the host (with genid: pools)
    identity_socket: str | None = None   # host side of the identity port (spares)

    def to_xml(self) -> str:
        """The domain XML libvirt defines."""
        dom = ET.Element('domain', type=self.virt_type)
        ET.SubElement(dom, 'name').text = domain_name(self.uuid)
        ET.SubElement(dom, 'uuid').text = self.uuid
        ET.SubElement(dom, 'title').text = self.name
        self._metadata(dom)
        ET.SubElement(dom, 'memory', unit='MiB').text = str(self.memory_mb)
        ET.SubElement(dom, 'vcpu').text = str(self.vcpus)
        if self.genid:
            ET.SubElement(dom, 'genid')
        self._os(dom)
        features = ET.SubElement(dom, 'features')
        ET.SubElement(features, 'acpi')
        if self.virt_type == 'qemu' and self.tcg_tb_cache_mb:
            tcg = ET.SubElement(features, 'tcg')
            ET.SubElement(tcg, 'tb-cache', unit='MiB').text = str(self.tcg_tb_cache_mb)
        if self.cpu_mode != 'none':
            ET.SubElement(dom, 'cpu', mode=self.cpu_mode)
        ET.SubElement(dom, 'clock', offset='utc')
        ET.SubElement(dom, 'on_poweroff').text = 'destroy'
        ET.SubElement(dom, 'on_reboot').text = 'restart'
        ET.SubElement(dom, 'on_crash').text = 'destroy'
        devices = ET.SubElement(dom, 'devices')
        for disk in self.disks:
            self._disk(devices, disk)
        for nic in self.nics:
            if nic.type != 'user':
                self._nic(devices, nic)
        serial = ET.SubElement(devices, 'serial', type='file')
        # append: the console of a stopped and started (or rebooted) guest keeps its past.
        ET.SubElement(serial, 'source', path=self.console_log, append='on')
        ET.SubElement(serial, 'target', port='0')
        channel = ET.SubElement(devices, 'channel', type='unix')   # libvirt picks the socket
        ET.SubElement(channel, 'target', type='virtio', name=AGENT_CHANNEL)
        if self.identity_socket:
            channel = ET.SubElement(devices, 'channel', type='unix')
            ET.SubElement(channel, 'source', mode='bind', path=self.identity_socket)
            ET.SubElement(channel, 'target', type='virtio', name=IDENTITY_CHANNEL)
        if self.rng:
            # Entropy from the host: the guest's RNG is ready at once (a restored guest's
            # kernel reseeds from its new generation id only once it is); rate-capped against
            # a guest that would drain it.
            rng = ET.SubElement(devices, 'rng', model='virtio')
            ET.SubElement(rng, 'rate', bytes=str(RNG_BYTES_PER_S), period='1000')
            ET.SubElement(rng, 'backend', model='random').text = '/dev/urandom'
        ET.SubElement(devices, 'memballoon', model='none')
        self._isolated_user_nics(dom)
        return ET.tostring(dom, encoding='unicode')

    def _isolated_user_nics(self, dom: ET.Element) -> None:
        user = [n for n in self.nics if n.type == 'user']
        if not user:
            return
        cmd = ET.SubElement(dom, '{%s}commandline' % QEMU_NS)
        for i, nic in enumerate(user):
            netdev = 'ca-user%d' % i
            # QEMU would give a device without an address the first free slot, and it takes
            # it before libvirt's own devices claim theirs: pin each to its own slot, from
            # USER_NIC_FIRST_SLOT up, far above what libvirt assigns from slot 2.
            device = '%s-net-pci,netdev=%s,id=%s-nic,mac=%s,addr=%#x' % (
                nic.model, netdev, netdev, nic.mac, USER_NIC_FIRST_SLOT + i)
            for arg in ('-netdev', 'user,id=%s,restrict=on' % netdev, '-device', device):
                ET.SubElement(cmd, '{%s}arg' % QEMU_NS, value=arg)

    def _metadata(self, dom: ET.Element) -> None:
        meta = ET.SubElement(dom, 'metadata')
        inst = ET.SubElement(meta, '{%s}instance' % METADATA_NS)
        ET.SubElement(inst, '{%s}uuid' % METADATA_NS).text = self.uuid
        ET.SubElement(inst, '{%s}name' % METADATA_NS).text = self.name
        for key, value in self.metadata:
            ET.SubElement(inst, '{%s}%s' % (METADATA_NS, key)).text = value

    def _os(self, dom: ET.Element) -> None:
        os_el = ET.SubElement(dom, 'os')
        ET.SubElement(os_el, 'type', arch=self.arch).text = 'hvm'
        if self.kernel:
            ET.SubElement(os_el, 'kernel').text = self.kernel
            if self.initrd:
                ET.SubElement(os_el, 'initrd').text = self.initrd
            if self.cmdline:
                ET.SubElement(os_el, 'cmdline').text = self.cmdline
        else:
            ET.SubElement(os_el, 'boot', dev='hd')

    @staticmethod
    def _disk(devices: ET.Element, disk: DiskConfig) -> None:
        el = ET.SubElement(devices, 'disk', type=disk.source_type, device='disk')
        ET.SubElement(el, 'driver', name='qemu', type=disk.format)
        source = ET.SubElement(el, 'source', **({'dev': disk.path}
                                                if disk.source_type == 'block'
                                                else {'file': disk.path}))
        if disk.transient or disk.readonly:
            _keep_owner(source)       # a shared image, a seed: QEMU reads them, root's
        if disk.backing:
            # Named, so libvirt leaves the shared image root's: dynamic ownership would chown
            # it to QEMU and, for a backing file, never give it back.
            store = ET.SubElement(el, 'backingStore', type='file')
            ET.SubElement(store, 'format', type=disk.backing[1])
            _keep_owner(ET.SubElement(store, 'source', file=disk.backing[0]))
            ET.SubElement(store, 'backingStore')
        ET.SubElement(el, 'target', dev=disk.target, bus='virtio')
        if disk.readonly:
            ET.SubElement(el, 'readonly')
        if disk.transient:
            # shareBacking: libvirt puts the overlay on before QEMU opens the image, so QEMU
            # opens it read-only, and any number of domains share it (without it QEMU opened
            # the image for writing, and a second domain on it failed on the write lock).
            ET.SubElement(el, 'transient', shareBacking='yes')

    @staticmethod
    def _nic(devices: ET.Element, nic: NicConfig) -> None:
        el = ET.SubElement(devices, 'interface', type=nic.type)
        ET.SubElement(el, 'mac', address=nic.mac)
        if nic.type == 'bridge':
            ET.SubElement(el, 'source', bridge=nic.bridge)
        ET.SubElement(el, 'model', type=nic.model)


def _keep_owner(source: ET.Element) -> None:
    """libvirt's dynamic ownership leaves this file as it is (root's, read by QEMU)."""
    ET.SubElement(source, 'seclabel', model='dac', relabel='no')


ET.register_namespace('ca', METADATA_NS)
ET.register_namespace('qemu', QEMU_NS)


def parse_metadata(xml: str) -> dict | None:
    """Return the agent's metadata stored in a domain's XML, or None if the domain is not ours."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    inst = root.find('metadata/{%s}instance' % METADATA_NS)
    if inst is None:
        return None
    return {child.tag.rsplit('}', 1)[-1]: child.text or '' for child in inst}


def _metadata_element(metadata: tuple[tuple[str, str], ...]) -> ET.Element:
    inst = ET.Element('{%s}instance' % METADATA_NS)
    for key, value in metadata:
        ET.SubElement(inst, '{%s}%s' % (METADATA_NS, key)).text = value
    return inst


def metadata_xml(metadata: tuple[tuple[str, str], ...]) -> str:
    """The agent's metadata element alone, without a namespace: ``setMetadata`` of a running
    domain puts its root into ours (libvirt refuses an element that declares it already);
    its children stay unqualified, which ``parse_metadata`` reads too."""
    inst = ET.Element('instance')
    for key, value in metadata:
        ET.SubElement(inst, key).text = value
    return ET.tostring(inst, encoding='unicode')


def restore_xml(saved: str, title: str, metadata: tuple[tuple[str, str], ...],
                disks: dict[str, str], console_log: str, identity_socket: str) -> str:
    """The XML a saved spare is restored with as an instance: the spare's own (libvirt
    refuses any other uuid, name, MAC or device address) with the instance's title and
    metadata, its disks' sources (target dev -> path), console log and identity socket.
    The agent channel's socket path is dropped: libvirt makes one for the new process."""
    root = ET.fromstring(saved)
    title_el = root.find('title')
    if title_el is None:
        title_el = ET.SubElement(root, 'title')
    title_el.text = title
    meta = root.find('metadata')
    if meta is None:
        meta = ET.SubElement(root, 'metadata')
    for old in meta.findall('{%s}instance' % METADATA_NS):
        meta.remove(old)
    meta.append(_metadata_element(metadata))
    for disk in root.findall('devices/disk'):
        target, source = disk.find('target'), disk.find('source')
        path = disks.get(target.get('dev')) if target is not None else None
        if path is not None and source is not None:
            source.set('dev' if 'dev' in source.attrib else 'file', path)
    for serial in root.findall('devices/serial'):
        source = serial.find('source')
        if source is not None and serial.get('type') == 'file':
            source.set('path', console_log)
    for channel in root.findall('devices/channel'):
        name = channel.find('target').get('name')
        source = channel.find('source')
        if name == IDENTITY_CHANNEL and source is not None:
            source.set('path', identity_socket)
        elif name == AGENT_CHANNEL and source is not None:
            channel.remove(source)
    return ET.tostring(root, encoding='unicode')


def agent_connected(xml: str) -> bool | None:
    """Whether the guest holds its agent channel open, by the channel state in a running
    domain's live XML; None when the XML says nothing (no channel, or not running)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for target in root.findall('devices/channel/target'):
        if target.get('name') == AGENT_CHANNEL and target.get('state'):
            return target.get('state') == 'connected'
    return None


def parse_capabilities(xml: str) -> dict:
    """Host facts from ``getCapabilities()``: arch, and which domain types each guest arch offers."""
    root = ET.fromstring(xml)
    host_arch = root.findtext('host/cpu/arch') or 'x86_64'
    guests = {}
    for guest in root.findall('guest'):
        arch = guest.find('arch')
        if arch is None:
            continue
        guests.setdefault(arch.get('name'), set()).update(d.get('type') for d in arch.findall('domain'))
    return {'arch': host_arch, 'domain_types': {a: sorted(t) for a, t in guests.items()}}
