"""What a node's state report says of each instance, by conductor version: the one
definition the agent's reports (``state``), the conductor's validation
(``agent.conductor.validate``) and its columns (``agent.conductor.db``, ``schema``) follow;
``tests/unit/test_report_format.py`` fails if they diverge. Pure.

An agent capped below the conductor's version (``[upgrade_levels] conductor``, a rolling
upgrade) leaves out the fields of later versions; the conductor stores them as unknown.
"""
from agent.rpc import versions

VERSION = '2.1'

# field -> the conductor version whose reports first carry it
FIELDS = {
    'uuid': '2.0', 'host': '2.0', 'name': '2.0', 'vm_state': '2.0', 'power_state': '2.0',
    'task': '2.0', 'fault': '2.0', 'boot_job': '2.0', 'accepted_at': '2.0',
    'active_at': '2.0', 'updated_at': '2.0', 'seq': '2.0', 'readiness': '2.0',
    'ready_at': '2.0',
    'delete_job': '2.1', 'power_job': '2.1', 'domain': '2.1',
}
# In an instance's RPC view, deliberately not reported: its spec (the control plane's own
# request) and its sizes (the node's usage report carries what the node holds).
NOT_REPORTED = ('spec', 'sizes')


def fields(version: str = VERSION) -> tuple[str, ...]:
    """The fields a report of conductor ``version`` carries (2.x)."""
    return tuple(f for f, since in FIELDS.items() if versions.at_least(version, since))


def state(instance: dict, host: str, version: str = VERSION) -> dict:
    """An instance's RPC view (``Instance.to_dict``) as its report at ``version``."""
    return {f: (host if f == 'host' else instance.get(f)) for f in fields(version)}
