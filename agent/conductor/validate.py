"""Checks of a node's report before the conductor stores anything of it (pure).

Anything that reaches the broker can send a report, so every field is checked: types, sizes,
states, and ``seq``/``generation`` numbers, which must not lie in the far future (a huge number
would freeze a row for ever: no later report could be newer). A report is taken whole or
refused whole, with the reason.
"""
import math
import re

from agent import exception
from agent import spec as specmod

HOST_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,254}')
VM_STATES = frozenset({'building', 'active', 'paused', 'stopped', 'deleting', 'deleted',
                       'error'})
POWER_STATES = frozenset({'running', 'paused', 'shutdown', 'crashed', 'nostate'})
READINESS = frozenset({'waiting', 'ready', 'late'})
TASKS = frozenset({'spawning', 'deleting', 'stopping', 'starting', 'rebooting'})
MAX_STATES = 10000
MAX_TEXT = 16384
RESOURCES = ('vcpus', 'memory_mb', 'disk_gb')


def _refuse(why: str) -> exception.InvalidReport:
    return exception.InvalidReport(reason=why)


def uuid(value, where: str) -> str:
    if not specmod.is_canonical_uuid(value):
        raise _refuse('%s: not a canonical uuid' % where)
    return value


def number(value, where: str, lo: float, hi: float, integer: bool = False,
           optional: bool = True):
    if value is None and optional:
        return None
    ok = (isinstance(value, int) if integer else isinstance(value, (int, float)))
    bad = isinstance(value, bool) or not ok or (
        isinstance(value, float) and not math.isfinite(value))
    if bad or not lo <= value <= hi:
        raise _refuse('%s: must be %s between %s and %s' % (
            where, 'an integer' if integer else 'a number', lo, hi))
    return value


def _text(value, where: str, limit: int = MAX_TEXT) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise _refuse('%s: must be a string of at most %d characters' % (where, limit))
    return value


def choice(value, where: str, allowed, optional: bool = False):
    if value is None and optional:
        return None
    if value not in allowed:
        raise _refuse('%s: must be one of %s' % (where, ', '.join(sorted(allowed))))
    return value


def host(value) -> str:
    if not isinstance(value, str) or not HOST_RE.fullmatch(value):
        raise _refuse('host: must be a node name (letters, digits, ".", "_", "-")')
    return value


def state(raw, i: int, node: str, max_seq: int) -> dict:
    """One instance state, cleaned; ``max_seq``: the largest seq not in the far future."""
    where = 'states[%d]' % i
    if not isinstance(raw, dict):
        raise _refuse('%s: must be an object' % where)
    if raw.get('host', node) != node:
        raise _refuse('%s.host: a node reports only its own instances' % where)
    return {
        'uuid': uuid(raw.get('uuid'), where + '.uuid'),
        'name': _text(raw.get('name'), where + '.name', 255),
        'vm_state': choice(raw.get('vm_state'), where + '.vm_state', VM_STATES),
        'power_state': choice(raw.get('power_state'), where + '.power_state', POWER_STATES,
                              optional=True),
        'task': choice(raw.get('task'), where + '.task', TASKS, optional=True),
        'fault': _text(raw.get('fault'), where + '.fault'),
        'boot_job': (None if raw.get('boot_job') is None
                     else uuid(raw.get('boot_job'), where + '.boot_job')),
        'accepted_at': number(raw.get('accepted_at'), where + '.accepted_at', 0, 1e11),
        'active_at': number(raw.get('active_at'), where + '.active_at', 0, 1e11),
        'updated_at': number(raw.get('updated_at'), where + '.updated_at', 0, 1e11),
        'seq': number(raw.get('seq'), where + '.seq', 1, max_seq, integer=True,
                      optional=False),
        'readiness': choice(raw.get('readiness'), where + '.readiness', READINESS,
                            optional=True),
        'ready_at': number(raw.get('ready_at'), where + '.ready_at', 0, 1e11),
        # 2.1 (an agent capped at 2.0 leaves them out: unknown)
        'delete_job': _job(raw.get('delete_job'), where + '.delete_job'),
        'power_job': _job(raw.get('power_job'), where + '.power_job'),
        'domain': _text(raw.get('domain'), where + '.domain', 255),
    }


def _job(value, where: str) -> str | None:
    return None if value is None else uuid(value, where)


def _amounts(raw, where: str) -> dict:
    if not isinstance(raw, dict):
        raise _refuse('%s: must be an object' % where)
    return {k: number(raw.get(k, 0), '%s.%s' % (where, k), 0, 1e15) for k in RESOURCES}


def resources(raw, node: str, max_seq: int) -> dict | None:
    """The node's usage report, cleaned (None: the report carries none)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _refuse('resources: must be an object')
    if raw.get('host', node) != node:
        raise _refuse('resources.host: a node reports only its own usage')
    inventory = raw.get('inventory')
    return {
        'generation': number(raw.get('generation'), 'resources.generation', 1, max_seq,
                             integer=True, optional=False),
        'capacity': _amounts(raw.get('capacity'), 'resources.capacity'),
        'usage': _amounts(raw.get('usage'), 'resources.usage'),
        'inventory': (None if inventory is None else {
            k: number(inventory.get(k, 0) if isinstance(inventory, dict) else None,
                      'resources.inventory.%s' % k, 0, 1e15, optional=False)
            for k in ('cpus', 'memory_mb', 'disk_gb')}),
        # held for what is not an instance (saved spares); absent from older agents
        'reserved': _amounts(raw.get('reserved', {}), 'resources.reserved'),
        'instances': number(raw.get('instances', 0), 'resources.instances', 0, 10 ** 9,
                            integer=True, optional=False),
        'at': number(raw.get('at'), 'resources.at', 0, 1e11),
    }


def report(node, states, usage, now_ns: int, max_future_s: float) -> tuple:
    """(host, states, resources) cleaned, or InvalidReport naming the first bad field."""
    node = host(node)
    if not isinstance(states, list) or len(states) > MAX_STATES:
        raise _refuse('states: must be a list of at most %d states' % MAX_STATES)
    max_seq = now_ns + int(max_future_s * 1e9)
    return (node, [state(s, i, node, max_seq) for i, s in enumerate(states)],
            resources(usage, node, max_seq))
