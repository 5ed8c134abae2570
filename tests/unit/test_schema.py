"""One schema for every RPC method: each bad argument named, unknown ones refused."""
import inspect
import re

import pytest
from hypothesis import given, settings, strategies as st
from oslo_messaging.rpc import dispatcher

from agent import exception
from agent.rpc import schema
from agent.rpc import server

U1 = '11111111-2222-3333-4444-555555555555'


class Manager:
    """Records what reached it: a bad request must never get here."""

    def __init__(self):
        self.calls = []
        self.requests = self.audits = self      # the parts the endpoint calls

    def __getattr__(self, name):
        return lambda *a: self.calls.append((name, a)) or {}


@pytest.mark.parametrize('method, args, match', [
    ('delete_instance', {}, '^uuid: required$'),
    ('delete_instance', {'uuid': 'x'}, '^uuid: is not a uuid$'),
    ('delete_instance', {'uuid': U1, 'force': True}, 'unexpected argument.*force'),
    ('get_job', {'job_id': 5}, '^job_id: must be a string$'),
    ('get_storage', {'uuids': 'abc'}, '^uuids: must be a list'),
    ('get_storage', {'uuids': [U1, '../etc']}, '^uuids: is not a uuid$'),
    ('boot_instance', {'spec': [1]}, '^spec: must be an object, got list$'),
    ('boot_instance', {}, '^spec: required$'),
    ('ping', {'x': 1}, 'ping takes none'),
    ('stop_instance', {'uuid': U1, 'timeout': -1}, '^timeout: whole seconds from 0'),
    ('stop_instance', {'uuid': U1, 'timeout': 1.5}, '^timeout: whole seconds'),
    ('stop_instance', {'uuid': U1, 'timeout': True}, '^timeout: whole seconds'),
    ('stop_instance', {'uuid': U1, 'force': True}, 'unexpected argument.*force'),
    ('start_instance', {}, '^uuid: required$'),
    ('reboot_instance', {'uuid': U1, 'hard': 'yes'}, '^hard: must be true or false$'),
    ('reboot_instance', {'uuid': U1, 'hard': 1}, '^hard: must be true or false$'),
])
def test_each_bad_argument_is_named(method, args, match):
    mgr = Manager()
    endpoint = server.ComputeEndpoint(mgr, lambda: {})
    with pytest.raises(dispatcher.ExpectedException) as caught:   # what oslo.messaging sends
        getattr(endpoint, method)({}, **args)
    error = caught.value.exc_info[1]
    assert isinstance(error, exception.InvalidSpec)
    assert error.args[0].startswith('Invalid request: ')
    assert re.search(match, error.args[0][len('Invalid request: '):]), error.args[0]
    assert mgr.calls == [] and endpoint.invalid_requests == 1


def test_every_endpoint_method_has_a_schema_and_nothing_more():
    methods = {m for m in dir(server.ComputeEndpoint) if not m.startswith('_')}
    assert methods - {'target', 'invalid_requests'} == set(schema.METHODS)


def test_every_endpoint_signature_names_exactly_its_arguments():
    # The signatures show the API; anything else lands in **unexpected and is refused by name.
    for method, args in schema.METHODS.items():
        params = inspect.signature(getattr(server.ComputeEndpoint, method)).parameters
        named = [p for p in params if p not in ('self', 'ctxt', 'unexpected')]
        assert named == [a.name for a in args], method
        assert params['unexpected'].kind is inspect.Parameter.VAR_KEYWORD


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(method=st.sampled_from(sorted(schema.METHODS)),
       args=st.dictionaries(st.text(max_size=12), anything, max_size=4))
def test_any_payload_is_either_clean_or_refused_by_name(method, args):
    try:
        clean = schema.validate(method, args)
    except exception.InvalidSpec as exc:
        assert str(exc).startswith('Invalid request: ')
        return
    assert set(clean) <= set(args)
