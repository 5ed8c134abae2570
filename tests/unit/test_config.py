"""Domain XML from objects, and the parsers of libvirt's XML."""
import xml.etree.ElementTree as ET

from agent.virt.libvirt import config as vconfig

U = '11111111-2222-3333-4444-555555555555'


def guest(**kw):
    base = dict(uuid=U, name='web-1', virt_type='qemu', arch='x86_64', vcpus=2, memory_mb=96,
                console_log='/var/lib/x/console.log', kernel='/img/vmlinuz',
                initrd='/img/initrd.img', cmdline='console=ttyS0 a=<b>&"c"', tcg_tb_cache_mb=16)
    base.update(kw)
    return vconfig.GuestConfig(**base)


def test_direct_kernel_boot_domain():
    root = ET.fromstring(guest().to_xml())
    assert root.get('type') == 'qemu'
    assert root.findtext('name') == 'ca-' + U
    assert root.findtext('uuid') == U
    assert root.find('memory').get('unit') == 'MiB' and root.findtext('memory') == '96'
    assert root.findtext('vcpu') == '2'
    assert root.findtext('os/kernel') == '/img/vmlinuz'
    # Metacharacters survive as data: ElementTree escapes them.
    assert root.findtext('os/cmdline') == 'console=ttyS0 a=<b>&"c"'
    assert root.find('features/tcg/tb-cache').text == '16'
    assert root.find('devices/serial/source').get('path') == '/var/lib/x/console.log'
    assert root.find('os/boot') is None
    assert root.find('devices/rng') is None and root.find('genid') is None
    # a pool's guest: a generation id and entropy from the host, rate-capped
    root = ET.fromstring(guest(genid=True, rng=True).to_xml())
    assert root.find('genid') is not None
    rng = root.find('devices/rng')
    assert rng.get('model') == 'virtio' and rng.findtext('backend') == '/dev/urandom'
    assert rng.find('rate').attrib == {'bytes': '1024', 'period': '1000'}


def test_a_running_domains_metadata_element_parses_back():
    meta = (('uuid', U), ('host', 'node1'), ('spare', 'dom-1'))
    element = ET.fromstring(vconfig.metadata_xml(meta))
    assert element.tag == 'instance' and [c.tag for c in element] == ['uuid', 'host', 'spare']
    element.tag = '{%s}instance' % vconfig.METADATA_NS     # what libvirt makes of it
    domain = '<domain><metadata>%s</metadata></domain>' % ET.tostring(element, 'unicode')
    assert vconfig.parse_metadata(domain) == dict(meta)


def test_kvm_has_no_tcg_features_and_disk_boot_has_boot_dev():
    root = ET.fromstring(guest(virt_type='kvm', kernel=None, initrd=None, cmdline=None,
                               disks=(vconfig.DiskConfig('/img/d.qcow2', 'qcow2', transient=True),),
                               cpu_mode='host-model').to_xml())
    assert root.find('features/tcg') is None
    assert root.find('os/boot').get('dev') == 'hd'
    assert root.find('cpu').get('mode') == 'host-model'
    disk = root.find('devices/disk')
    assert disk.find('source').get('file') == '/img/d.qcow2'
    assert disk.find('driver').get('type') == 'qcow2'
    assert disk.find('transient').get('shareBacking') == 'yes'
    # The shared image is read by QEMU, never chowned to it (dynamic ownership left out).
    assert disk.find('source/seclabel').attrib == {'model': 'dac', 'relabel': 'no'}


def test_an_overlays_image_is_named_and_kept_roots():
    root = ET.fromstring(guest(disks=(vconfig.DiskConfig(
        '/inst/u/disk.qcow2', 'qcow2', backing=('/img/base.raw', 'raw')),)).to_xml())
    disk = root.find('devices/disk')
    assert disk.find('source').get('file') == '/inst/u/disk.qcow2'
    assert disk.find('source/seclabel') is None        # the instance's own: QEMU's while it runs
    store = disk.find('backingStore')
    assert store.find('format').get('type') == 'raw'
    assert store.find('source').get('file') == '/img/base.raw'
    assert store.find('source/seclabel').attrib == {'model': 'dac', 'relabel': 'no'}
    assert list(store.find('backingStore')) == []       # the chain ends there
    plain = ET.fromstring(guest(disks=(vconfig.DiskConfig('/dev/vg/lv'),)).to_xml())
    assert plain.find('devices/disk/backingStore') is None


def test_nics():
    root = ET.fromstring(guest(nics=(vconfig.NicConfig('user', '52:54:00:00:00:01'),
                                     vconfig.NicConfig('bridge', '52:54:00:00:00:02', 'br0'))).to_xml())
    bridge, = root.findall('devices/interface')
    assert bridge.find('source').get('bridge') == 'br0'
    assert bridge.find('mac').get('address') == '52:54:00:00:00:02'
    # The user NIC is QEMU's own, isolated: slirp with restrict=on (no host, no network).
    args = [a.get('value') for a in root.findall('{%s}commandline/{%s}arg'
                                                 % (vconfig.QEMU_NS, vconfig.QEMU_NS))]
    # Pinned to a PCI slot of its own: QEMU would otherwise take libvirt's slot 2 for it
    # (a real boot with a bridge NIC and a user NIC failed that way).
    assert args == ['-netdev', 'user,id=ca-user0,restrict=on',
                    '-device', 'virtio-net-pci,netdev=ca-user0,id=ca-user0-nic,'
                               'mac=52:54:00:00:00:01,addr=0x10']


def test_each_user_nic_gets_its_own_pci_slot():
    nics = tuple(vconfig.NicConfig('user', '52:54:00:00:00:%02x' % i) for i in range(3))
    root = ET.fromstring(guest(nics=nics).to_xml())
    devices = [a.get('value') for a in root.findall('{%s}commandline/{%s}arg'
                                                    % (vconfig.QEMU_NS, vconfig.QEMU_NS))][3::4]
    assert [d.rsplit('addr=', 1)[1] for d in devices] == ['0x10', '0x11', '0x12']


def test_no_qemu_commandline_without_user_nics():
    root = ET.fromstring(guest(nics=(vconfig.NicConfig('bridge', '52:54:00:00:00:02', 'br0'),))
                         .to_xml())
    assert root.find('{%s}commandline' % vconfig.QEMU_NS) is None


def test_metadata_round_trip_and_foreign_domains():
    meta = vconfig.parse_metadata(guest(metadata=(('host', 'n1'),)).to_xml())
    assert meta == {'uuid': U, 'name': 'web-1', 'host': 'n1'}
    assert vconfig.parse_metadata('<domain><name>x</name></domain>') is None
    assert vconfig.parse_metadata('not xml') is None


def test_parse_capabilities():
    caps = vconfig.parse_capabilities(
        "<capabilities><host><cpu><arch>x86_64</arch></cpu></host>"
        "<guest><arch name='x86_64'><domain type='qemu'/><domain type='kvm'/></arch></guest>"
        "<guest><arch name='i686'><domain type='qemu'/></arch></guest></capabilities>")
    assert caps == {'arch': 'x86_64', 'domain_types': {'x86_64': ['kvm', 'qemu'], 'i686': ['qemu']}}
