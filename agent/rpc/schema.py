"""The arguments of every RPC method of the agent, checked in one place before any work.

Each method lists its arguments: a name, whether it is required, and a check that returns the
clean value or raises InvalidSpec naming the argument. Unknown arguments are refused. The boot
spec's own fields are checked by ``agent.spec.validate_boot_spec`` (the spec argument's check
here only makes sure it is an object; the manager validates it against the node's limits).
"""
import dataclasses
from typing import Any, Callable

from agent import exception
from agent import spec as specmod

MAX_UUIDS = 10000
MAX_CONSOLE_BYTES = 1 << 20


def _object(name: str, value):
    if not isinstance(value, dict):
        raise exception.InvalidSpec(reason='%s: must be an object, got %s'
                                    % (name, type(value).__name__))
    return value


def _uuid(name: str, value):
    return specmod.validate_uuid(value, name)


def _uuid_list(name: str, value):
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_UUIDS:
        raise exception.InvalidSpec(reason='%s: must be a list of at most %d uuids'
                                    % (name, MAX_UUIDS))
    return [specmod.validate_uuid(v, name) for v in value]


def _console_bytes(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 1 <= value <= MAX_CONSOLE_BYTES:
        raise exception.InvalidSpec(reason='%s: an integer from 1 to %d'
                                    % (name, MAX_CONSOLE_BYTES))
    return value


def _seconds(name: str, value):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 86400:
        raise exception.InvalidSpec(reason='%s: whole seconds from 0 to 86400' % name)
    return value


def _flag(name: str, value):
    if not isinstance(value, bool):
        raise exception.InvalidSpec(reason='%s: must be true or false' % name)
    return value


@dataclasses.dataclass(frozen=True)
class Arg:
    """One argument of an RPC method: its name, its check, whether it is required."""
    name: str
    check: Callable[[str, Any], Any]
    required: bool = True


METHODS: dict[str, tuple[Arg, ...]] = {
    'boot_instance': (Arg('spec', _object),),
    'delete_instance': (Arg('uuid', _uuid),),
    'get_job': (Arg('job_id', _uuid),),
    'get_instance': (Arg('uuid', _uuid),),
    'list_instances': (),
    'get_storage': (Arg('uuids', _uuid_list, required=False),),
    'get_resources': (),
    'audit_resources': (),
    'get_stats': (),
    'ping': (),
    'write_trace': (),
    'get_console_output': (Arg('uuid', _uuid), Arg('max_bytes', _console_bytes, required=False)),
    'stop_instance': (Arg('uuid', _uuid), Arg('timeout', _seconds, required=False)),
    'start_instance': (Arg('uuid', _uuid),),
    'reboot_instance': (Arg('uuid', _uuid), Arg('hard', _flag, required=False)),
}


def validate(method: str, args: dict) -> dict:
    """The clean arguments of ``method``, or InvalidSpec naming the first bad one."""
    schema = METHODS[method]
    known = {a.name for a in schema}
    extra = sorted(str(k)[:64] for k in args if k not in known)
    if extra:
        raise exception.InvalidSpec(reason='%s: unexpected argument(s) %s; %s takes %s'
                                    % (method, ', '.join(extra), method,
                                       ', '.join(sorted(known)) or 'none'))
    clean = {}
    for arg in schema:
        if arg.name not in args:
            if arg.required:
                raise exception.InvalidSpec(reason='%s: required' % arg.name)
            continue
        clean[arg.name] = arg.check(arg.name, args[arg.name])
    return clean
