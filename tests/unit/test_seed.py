"""The NoCloud seed: the spec's fields checked, the files cloud-init reads, the disk the guest
gets read-only, and nothing left when anything fails (fake libvirt, fake genisoimage)."""
import base64
import json
import os
import struct
import xml.etree.ElementTree as ET

import pytest

from agent import exception
from agent import nocloud
from agent import spec as specmod
from agent.storage import operations
from agent.storage import seeds
from agent.warm import pools as poolsmod
from tests.unit.conftest import boot_spec

U1 = '11111111-2222-3333-4444-555555555555'


def ssh_key(kind='ssh-ed25519', comment=' user@laptop', body=b'\x01' * 32):
    blob = struct.pack('>I', len(kind)) + kind.encode() + struct.pack('>I', len(body)) + body
    return '%s %s%s' % (kind, base64.b64encode(blob).decode(), comment)


KEY = ssh_key()
SEEDED = dict(user_data='#!/bin/sh\necho seeded > /run/marker\n', ssh_keys=[KEY],
              hostname='web-1.example', meta={'role': 'web', 'tier': 'front'})


def validate(conf, **fields):
    return specmod.validate_boot_spec(boot_spec(**fields),
                                      specmod.Limits(image_dir=conf.image_dir))


def test_seed_fields_are_kept_and_survive_the_journal(conf):
    spec = validate(conf, **SEEDED)
    assert spec.seeded and spec.hostname == 'web-1.example' and spec.ssh_keys == (KEY,)
    assert spec.meta == (('role', 'web'), ('tier', 'front'))
    assert specmod.BootSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert not validate(conf).seeded
    assert not validate(conf, user_data='', ssh_keys=[], meta={}).seeded


@pytest.mark.parametrize('fields, named', [
    ({'user_data': 7}, 'user_data'),
    ({'user_data': 'x' * (64 * 1024 + 1)}, 'user_data'),
    ({'user_data': 'é' * (32 * 1024 + 1)}, 'user_data'),          # 2 bytes each: too many
    ({'user_data': 'a\0b'}, 'user_data'),
    ({'user_data': '\ud800'}, 'user_data'),                        # not encodable as UTF-8
    ({'ssh_keys': KEY}, 'ssh_keys'),                               # not a list
    ({'ssh_keys': [KEY] * 17}, 'ssh_keys'),
    ({'ssh_keys': ['command="rm -rf /" ' + KEY]}, 'ssh_keys[0]'),  # options
    ({'ssh_keys': [KEY + '\nssh-ed25519 AAAA']}, 'ssh_keys[0]'),   # a second line
    ({'ssh_keys': [KEY, 'ssh-dss AAAAB3NzaC1kc3M=']}, 'ssh_keys[1]'),
    ({'ssh_keys': [ssh_key(kind='ssh-rsa').replace('ssh-rsa', 'ssh-ed25519', 1)]},
     'ssh_keys[0]'),                                               # blob of another type
    ({'ssh_keys': ['ssh-ed25519 !!!!']}, 'ssh_keys[0]'),
    ({'ssh_keys': [ssh_key(comment=' x' * 200)]}, 'ssh_keys[0]'),
    ({'hostname': 'under_score'}, 'hostname'),
    ({'hostname': '-lead'}, 'hostname'),
    ({'hostname': 'a' * 64}, 'hostname'),
    ({'hostname': 'a.' * 127 + 'a'}, 'hostname'),                 # 255 characters
    ({'hostname': 'dot..dot'}, 'hostname'),
    ({'hostname': 'x\n'}, 'hostname'),
    ({'meta': ['role']}, 'meta'),
    ({'meta': {str(i): 'v' for i in range(17)}}, 'meta'),
    ({'meta': {'bad key': 'v'}}, 'meta'),
    ({'meta': {'role': 1}}, 'meta.role'),
    ({'meta': {'role': 'a\nb'}}, 'meta.role'),
    ({'meta': {'role': 'v' * 257}}, 'meta.role'),
])
def test_a_bad_seed_field_is_refused_naming_it(conf, fields, named):
    with pytest.raises(exception.InvalidSpec) as err:
        validate(conf, **fields)
    assert str(err.value).startswith('Invalid request: %s:' % named), err.value


def test_only_a_cloud_init_pools_spec_takes_seed_fields():
    flavor = (('kernel', 'vmlinuz'), ('memory_mb', 128))
    port = poolsmod.Pool(name='small', size=1, flavor=flavor)
    cloud = poolsmod.Pool(name='debian', size=1, flavor=flavor, identity='cloud-init')
    with pytest.raises(exception.InvalidSpec, match='hostname: pool small.s guests read no seed'):
        poolsmod.apply({'uuid': U1, 'pool': 'small', 'hostname': 'web-1'}, {'small': port})
    whole = poolsmod.apply({'uuid': U1, 'pool': 'debian', 'hostname': 'web-1',
                            'ssh_keys': [KEY]}, {'debian': cloud})
    assert whole['hostname'] == 'web-1' and whole['kernel'] == 'vmlinuz'
    assert cloud.fingerprint() != port.fingerprint()     # a spare of one is not the other's


def test_the_seed_files_are_what_cloud_init_reads(conf):
    files = nocloud.seed_files(validate(conf, **SEEDED))
    assert sorted(files) == ['meta-data', 'network-config', 'user-data']
    meta = json.loads(files['meta-data'])       # JSON: YAML reads it as it is
    assert meta == {'instance-id': U1, 'local-hostname': 'web-1.example', 'public-keys': [KEY],
                    'meta': {'role': 'web', 'tier': 'front'}}
    assert files['user-data'] == SEEDED['user_data'].encode()
    assert json.loads(files['network-config'])['version'] == 2
    bare = nocloud.seed_files(validate(conf, hostname='h'))
    assert json.loads(bare['meta-data']) == {'instance-id': U1, 'local-hostname': 'h'}
    assert bare['user-data'] == b''


def test_the_worker_builds_the_seed_of_the_instances_own_directory_only():
    policy = operations.Policy(instances_path='/srv/inst')
    argv = operations.build('seed_create', {'uuid': U1}, policy)
    assert argv[0] == 'genisoimage' and argv[argv.index('-volid') + 1] == 'cidata'
    assert argv[argv.index('-output') + 1] == '/srv/inst/%s/seed.iso' % U1
    assert argv[-1] == '/srv/inst/%s/seed.d' % U1
    for args in ({'uuid': '../etc'}, {'uuid': 'AAAAAAAA-2222-3333-4444-555555555555'}, {}):
        with pytest.raises(operations.Refused):
            operations.build('seed_create', args, policy)
    with pytest.raises(operations.Refused):
        operations.build('seed_create', {'uuid': U1}, operations.Policy())


def _boot(agent, **fields):
    answer = agent.manager.requests.boot_instance(boot_spec(**fields))
    return agent.wait_job(answer['job_id'])


def test_a_seeded_boot_gives_the_guest_its_seed_read_only(agent, hv):
    job = _boot(agent, disk_gb=1, **SEEDED)
    assert job['state'] == 'done', job
    assert job['libvirt_calls'] == 2                     # the seed costs no libvirt call
    directory = agent.dirs.path(U1)
    assert sorted(os.listdir(directory)) == ['.compute-agent-instance', 'seed.iso']
    with open(os.path.join(directory, 'seed.iso'), 'rb') as f:
        data = f.read()
    assert len(data) == seeds.SEED_SIZE                  # every seed padded to one size
    iso = json.loads(data.rstrip(b'\0'))                # the fake genisoimage's stand-in
    assert iso['label'] == 'cidata'
    assert json.loads(iso['files']['meta-data'])['local-hostname'] == 'web-1.example'
    assert iso['files']['user-data'] == SEEDED['user_data']
    disks = ET.fromstring(hv.domains[U1].xml).findall('devices/disk')
    assert [d.find('target').get('dev') for d in disks] == ['vda', 'vdb']
    seed = disks[1]
    assert seed.find('source').get('file') == os.path.join(directory, 'seed.iso')
    assert seed.find('readonly') is not None and seed.find('driver').get('type') == 'raw'
    assert seed.find('source/seclabel').get('relabel') == 'no'
    assert agent.wait_job(agent.manager.requests.delete_instance(U1)['job_id'])['state'] == 'done'
    assert not os.path.exists(directory)


def test_an_image_without_a_disk_stays_vda_and_the_seed_follows(agent, hv):
    assert _boot(agent, image='disk.qcow2', hostname='h1')['state'] == 'done'
    disks = ET.fromstring(hv.domains[U1].xml).findall('devices/disk')
    assert [(d.find('target').get('dev'), d.find('transient') is not None,
             d.find('readonly') is not None) for d in disks] == [('vda', True, False),
                                                                 ('vdb', False, True)]


def test_a_seed_that_cannot_be_made_fails_the_boot_and_leaves_nothing(agent, hv):
    agent.lvm.fail['genisoimage'] = (1, 'genisoimage: No space left on device')
    job = _boot(agent, disk_gb=1, hostname='h1')
    assert job['state'] == 'failed' and 'No space left on device' in job['reason']
    assert U1 not in hv.domains                          # no libvirt call was made
    assert agent.storage.disks() == {}                   # the root disk went too
    directory = agent.dirs.path(U1)
    assert not os.path.exists(os.path.join(directory, 'seed.iso'))
    assert not os.path.exists(os.path.join(directory, 'seed.d'))


def test_a_domain_that_fails_to_start_takes_its_seed_with_it(agent, hv):
    hv.fail_next['createWithFlags'] = Exception('boom')
    job = _boot(agent, hostname='h1')
    assert job['state'] == 'failed'
    assert not os.path.exists(os.path.join(agent.dirs.path(U1), 'seed.iso'))
