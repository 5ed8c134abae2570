"""Boot spec validation: every bad input gets InvalidSpec naming the field."""
import os

import pytest

from agent import exception
from agent import spec as specmod
from tests.unit import qcow2

U = '11111111-2222-3333-4444-555555555555'


@pytest.fixture
def limits(image_dir):
    return specmod.Limits(image_dir=str(image_dir), max_vcpus=8, max_memory_mb=4096,
                          bridge_exists=lambda n: n == 'br0', allow_user_nics=True,
                          bridges=frozenset({'br0', 'br9'}))


def good(**extra):
    spec = {'uuid': U, 'kernel': 'vmlinuz', 'initrd': 'initrd.img'}
    spec.update(extra)
    return spec


def test_a_good_spec_is_normalised(limits, image_dir):
    s = specmod.validate_boot_spec(good(uuid=U.upper(), nics=[{'type': 'user'}]), limits)
    assert s.uuid == U
    assert s.name == 'instance-11111111'
    assert (s.vcpus, s.memory_mb) == (1, 128)
    assert s.kernel == os.path.join(os.path.realpath(image_dir), 'vmlinuz')
    assert s.nics == (specmod.Nic(type='user'),)


@pytest.mark.parametrize('bad, field', [
    ({'uuid': None}, 'uuid'),
    ({'uuid': 'not-a-uuid'}, 'uuid'),
    ({'uuid': 12345}, 'uuid'),
    ({'uuid': '{%s}' % U}, 'canonical'),
    ({'uuid': U.replace('-', '')}, 'canonical'),
    ({'vcpus': 0}, 'vcpus'),
    ({'vcpus': -1}, 'vcpus'),
    ({'vcpus': 9}, 'vcpus'),
    ({'vcpus': True}, 'vcpus'),
    ({'vcpus': 1.5}, 'vcpus'),
    ({'vcpus': '2'}, 'vcpus'),
    ({'memory_mb': 0}, 'memory_mb'),
    ({'memory_mb': 10 ** 15}, 'memory_mb'),
    ({'name': '<domain>'}, 'name'),
    ({'name': 'a;rm -rf /'}, 'name'),
    ({'name': '$(reboot)'}, 'name'),
    ({'name': 'x' * 64}, 'name'),
    ({'name': 'ünïcode'}, 'name'),
    ({'name': ''}, 'name'),
    ({'name': 'web\n'}, 'name'),
    ({'kernel': 'vmlinuz\n'}, 'kernel'),
    ({'nics': [{'type': 'user', 'mac': '52:54:00:00:00:01\n'}]}, 'mac'),
    ({'kernel': '../vmlinuz'}, 'kernel'),
    ({'kernel': '/etc/passwd'}, 'kernel'),
    ({'kernel': '..'}, 'kernel'),
    ({'kernel': 'missing'}, 'kernel'),
    ({'initrd': 'a/b'}, 'initrd'),
    ({'image': 'x\x00y'}, 'image'),
    ({'cmdline': 'console=ttyS0\n'}, 'cmdline'),
    ({'cmdline': 'x' * 2000}, 'cmdline'),
    ({'nics': 'user'}, 'nics'),
    ({'nics': [{'type': 'tap'}]}, 'nics[0].type'),
    ({'nics': [{'type': 'bridge'}]}, 'nics[0].bridge'),
    ({'nics': [{'type': 'bridge', 'bridge': 'br0; ip link del eth0'}]}, 'bridge'),
    ({'nics': [{'type': 'bridge', 'bridge': 'nosuch'}]}, 'not a bridge this node offers'),
    ({'nics': [{'type': 'bridge', 'bridge': 'br9'}]}, 'no Linux bridge'),
    ({'nics': [{'type': 'user', 'bridge': 'br0'}]}, 'only valid'),
    ({'nics': [{'type': 'user', 'mac': '01:00:00:00:00:01'}]}, 'unicast'),
    ({'nics': [{'type': 'user', 'mac': 'zz'}]}, 'mac'),
    ({'nics': [{'type': 'user', 'extra': 1}]}, 'unknown fields'),
    ({'nics': [{'type': 'user'}] * 9}, 'at most'),
    ({'disk_gib': 3}, 'unknown fields'),
    ({'disk_gb': -1}, 'disk_gb'),
    ({'disk_gb': 1.5}, 'disk_gb'),
    ({'disk_gb': '10'}, 'disk_gb'),
    ({'disk_gb': True}, 'disk_gb'),
    ({'disk_gb': 10 ** 12}, 'disk_gb'),
    ({'kernel': None, 'initrd': None}, 'image or kernel'),
])
def test_bad_input_is_refused_with_the_field_named(limits, bad, field):
    with pytest.raises(exception.InvalidSpec) as err:
        specmod.validate_boot_spec(good(**bad), limits)
    assert field in str(err.value)


def test_at_most_eight_user_nics_even_where_more_nics_are_allowed(image_dir):
    limits = specmod.Limits(image_dir=str(image_dir), max_nics=16, allow_user_nics=True)
    assert len(specmod.validate_boot_spec(good(nics=[{'type': 'user'}] * 8), limits).nics) == 8
    with pytest.raises(exception.InvalidSpec, match='at most 8 user NICs'):
        specmod.validate_boot_spec(good(nics=[{'type': 'user'}] * 9), limits)


def test_disk_gb_is_kept(limits):
    assert specmod.validate_boot_spec(good(disk_gb=20), limits).disk_gb == 20
    assert specmod.validate_boot_spec(good(), limits).disk_gb == 0


def test_initrd_without_kernel_is_refused(limits):
    with pytest.raises(exception.InvalidSpec, match='only valid with a kernel'):
        specmod.validate_boot_spec({'uuid': U, 'image': 'disk.raw', 'initrd': 'initrd.img'}, limits)


def test_a_symlink_leaving_the_image_dir_is_refused(limits, image_dir, tmp_path):
    outside = tmp_path / 'secret'
    outside.write_text('x')
    os.symlink(outside, image_dir / 'link')
    with pytest.raises(exception.InvalidSpec, match='outside the image directory'):
        specmod.validate_boot_spec(good(kernel='link'), limits)


def test_a_non_object_spec_is_refused(limits):
    for bad in (None, [], 'spec', 42):
        with pytest.raises(exception.InvalidSpec, match='object'):
            specmod.validate_boot_spec(bad, limits)


# -- trust: networks a spec may ask for ------------------------------------------------------
def test_user_nics_are_refused_unless_the_operator_allows_them(image_dir):
    closed = specmod.Limits(image_dir=str(image_dir))          # the defaults
    with pytest.raises(exception.InvalidSpec, match=r'nics\[0\]\.type: user-mode NICs are '
                                                    r'disabled'):
        specmod.validate_boot_spec(good(nics=[{'type': 'user'}]), closed)


def test_only_allow_listed_bridges_can_be_chosen(image_dir):
    # An existing bridge that is not on the list (e.g. the management bridge) is refused.
    limits = specmod.Limits(image_dir=str(image_dir), bridge_exists=lambda n: True,
                            bridges=frozenset({'tenant0'}))
    with pytest.raises(exception.InvalidSpec, match="'mgmt0' is not a bridge this node offers"):
        specmod.validate_boot_spec(good(nics=[{'type': 'bridge', 'bridge': 'mgmt0'}]), limits)
    ok = specmod.validate_boot_spec(good(nics=[{'type': 'bridge', 'bridge': 'tenant0'}]), limits)
    assert ok.nics == (specmod.Nic(type='bridge', bridge='tenant0'),)
    nothing = specmod.Limits(image_dir=str(image_dir), bridge_exists=lambda n: True)
    with pytest.raises(exception.InvalidSpec, match='not a bridge this node offers'):
        specmod.validate_boot_spec(good(nics=[{'type': 'bridge', 'bridge': 'tenant0'}]), nothing)


# -- trust: images ---------------------------------------------------------------------------
@pytest.mark.parametrize('head, why', [
    (qcow2.header(backing=b'/etc/shadow'), 'backing file'),
    (qcow2.header(version=2, backing=b'/etc/shadow'), 'backing file'),
    (qcow2.header(backing=b'/etc/shadow', backing_format=b'raw'), 'backing file'),
    (qcow2.header(data_file=b'/dev/sda'), 'external data file'),
    (qcow2.header(crypt=1), 'encrypted'),
    (b'QFI\xfb' + b'\0' * 200, 'version'),
])
def test_an_image_that_refers_to_other_files_is_refused(limits, image_dir, head, why):
    (image_dir / 'evil.qcow2').write_bytes(head)
    with pytest.raises(exception.InvalidImage, match=why) as err:
        specmod.validate_boot_spec({'uuid': U, 'image': 'evil.qcow2'}, limits)
    assert str(err.value).startswith('image: ')


def test_a_clean_qcow2_gets_its_format_and_size_from_its_header(limits):
    s = specmod.validate_boot_spec({'uuid': U, 'image': 'disk.qcow2', 'disk_gb': 1}, limits)
    assert (s.image_format, s.files[0].virtual_size) == ('qcow2', 1 << 30)
    raw = specmod.validate_boot_spec({'uuid': U, 'image': 'disk.raw'}, limits)
    assert raw.image_format == 'raw'


def test_a_hard_link_to_a_host_file_is_refused(limits, image_dir, tmp_path):
    secret = tmp_path / 'shadow'
    secret.write_text('root:$6$...')
    os.link(secret, image_dir / 'innocent.raw')      # passes any realpath check
    with pytest.raises(exception.InvalidImage, match='2 links'):
        specmod.validate_boot_spec({'uuid': U, 'image': 'innocent.raw'}, limits)


def test_a_file_swapped_after_the_check_is_refused_at_use(limits, image_dir):
    s = specmod.validate_boot_spec({'uuid': U, 'image': 'disk.raw'}, limits)
    s.recheck_files()                                 # unchanged: fine
    os.unlink(image_dir / 'disk.raw')
    (image_dir / 'disk.raw').write_bytes(b'\1' * 512)    # another file, same name and size
    with pytest.raises(exception.InvalidImage, match='changed after it was checked'):
        s.recheck_files()
    os.unlink(image_dir / 'disk.raw')
    (image_dir / 'disk.raw').write_bytes(qcow2.header(backing=b'/etc/shadow'))
    with pytest.raises(exception.InvalidImage, match='backing file'):
        s.recheck_files()
    # The journal's copy of the spec keeps what was checked.
    again = specmod.BootSpec.from_dict(s.to_dict())
    assert again == s
    with pytest.raises(exception.InvalidImage):
        again.recheck_files()


def test_a_symlink_inside_the_image_dir_is_not_followed(limits, image_dir):
    os.symlink('disk.raw', image_dir / 'alias.raw')
    with pytest.raises(exception.InvalidSpec):
        specmod.validate_boot_spec({'uuid': U, 'image': 'alias.raw'}, limits)
