"""One report format: what the agent reports of an instance, what the conductor accepts and
what it stores are the fields ``agent.report`` defines; a field added to one of them alone
fails here."""
import pytest

from agent import exception
from agent import report as reportmod
from agent import spec as specmod
from agent.compute import instance as instancemod
from agent.conductor import db
from agent.conductor import schema
from agent.conductor import validate
from agent.rpc import versions
from tests.unit.conftest import boot_spec

CONDUCTOR_ONLY = {'received_at', 'active_seen_at', 'ready_seen_at'}   # the conductor's own


def _view() -> dict:
    """An instance as the agent's RPC API shows it."""
    return instancemod.Instance.from_spec(specmod.BootSpec.from_dict(boot_spec(name='web-1'))).to_dict()


def test_every_field_of_an_instance_is_reported_or_deliberately_not():
    view = _view()
    assert set(view) - {'host'} == (set(reportmod.FIELDS) - {'host'}) | set(
        reportmod.NOT_REPORTED)
    assert set(reportmod.state(view, 'node-1')) == set(reportmod.FIELDS)


def test_the_conductor_accepts_and_stores_exactly_the_reported_fields():
    full = {f: None for f in reportmod.FIELDS}
    full.update(uuid='11111111-2222-3333-4444-555555555555', vm_state='active', seq=5,
                host='node-1')
    assert set(validate.state(full, 0, 'node-1', 10)) | {'host'} == set(reportmod.FIELDS)
    assert db.FIELDS == tuple(reportmod.FIELDS) and db.FIELDS[0] == 'uuid'
    columns = {c.name for c in schema.instances.columns}
    assert columns - CONDUCTOR_ONLY == set(reportmod.FIELDS)


def test_a_report_below_the_current_version_leaves_the_later_fields_out():
    assert set(reportmod.fields('2.1')) - set(reportmod.fields('2.0')) == {
        'delete_job', 'power_job', 'domain'}
    assert reportmod.fields() == reportmod.fields(reportmod.VERSION)
    view = _view()
    assert 'domain' not in reportmod.state(view, 'node-1', '2.0')


@pytest.mark.parametrize('configured, current, expected', [
    (None, '1.10', '1.10'), ('1.7', '1.10', '1.7'), ('1.10', '1.10', '1.10'),
    ('1.0', '1.10', '1.0'), ('2.0', '2.1', '2.0')])
def test_a_cap_is_a_version_of_the_same_major_at_most_the_current(
        configured, current, expected):
    assert versions.cap(configured, current, 'compute') == expected


@pytest.mark.parametrize('configured', ['1.11', '2.0', '0.9', 'seven', '1', '1.x'])
def test_a_cap_this_code_cannot_speak_is_a_config_error(configured):
    with pytest.raises(exception.ConfigError, match=r'\[upgrade_levels\] compute'):
        versions.cap(configured, '1.10', 'compute')


def test_versions_compare_as_numbers():
    assert versions.at_least('1.10', '1.9') and not versions.at_least('1.9', '1.10')
    with pytest.raises(exception.VersionCapped, match='stop_instance needs RPC version 1.7'):
        versions.check('stop_instance', '1.7', '1.6', 'compute')
