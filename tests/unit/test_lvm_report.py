"""LVM report parsers, on output captured from lvm2 2.03.16 on a loop-backed VG."""
import os

import pytest

from agent import exception
from agent.storage import lvm_report

DATA = os.path.join(os.path.dirname(__file__), 'data')


def read(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def test_lvs_report():
    lvs = lvm_report.parse_lvs(read('lvs-probevg.json'))
    assert [lv.name for lv in lvs] == ['ca-11111111-2222-3333-4444-555555555555-root', 't1', 't2']
    root = lvs[0]
    assert root.size == 1024 ** 3 and root.vg == 'probevg'
    assert root.tags == ('ca-instance-11111111-2222-3333-4444-555555555555', 'compute-agent')
    assert lvs[2].tags == ()


def test_vgs_report():
    (vg,) = lvm_report.parse_vgs(read('vgs-probevg.json'))
    assert (vg.name, vg.size, vg.free, vg.extent_size) == ('probevg', 2143289344, 1052770304,
                                                           4194304)


def test_empty_report_of_a_missing_vg():
    assert lvm_report.parse_lvs(read('lvs-novg.json')) == []


@pytest.mark.parametrize('name, message', [
    ('lvs-novg.stderr', 'Volume group "nosuchvg" not found; Cannot process volume group nosuchvg'),
    ('lvcreate-exists.stderr', 'Logical Volume "t1" already exists in volume group "probevg"'),
    ('lvcreate-full.stderr',
     'Volume group "probevg" has insufficient free space (251 extents): 25600 required.'),
])
def test_lvm_message_keeps_the_error_and_drops_the_warnings(name, message):
    assert lvm_report.lvm_message(read(name)) == message


@pytest.mark.parametrize('text', ['', 'not json', '{"report": 3}',
                                  '{"report": [{"lv": [{"lv_name": "x", "lv_size": "1.5g"}]}]}'])
def test_garbage_is_a_storage_error(text):
    with pytest.raises(exception.StorageError):
        lvm_report.parse_lvs(text)
