"""get_console_output: the bounded tail of an instance's serial console log."""
import os

import pytest

from agent import exception
from agent.rpc import schema
from tests.unit.conftest import boot_spec

U1 = '11111111-2222-3333-4444-555555555555'
U2 = '22222222-2222-3333-4444-555555555555'


def _console(agent, uuid, data: bytes) -> None:
    with open(os.path.join(agent.driver.instance_dir(uuid), 'console.log'), 'wb') as f:
        f.write(data)


def test_the_tail_of_the_console_log_is_returned_bounded(agent):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    assert agent.manager.requests.console_output(U1) == {'uuid': U1, 'output': '', 'size': 0,
                                                         'truncated': False}
    _console(agent, U1, b'x' * 100 + b'COMPUTE-AGENT-GUEST-READY\n')
    whole = agent.manager.requests.console_output(U1)
    assert whole['output'].endswith('COMPUTE-AGENT-GUEST-READY\n') and not whole['truncated']
    tail = agent.manager.requests.console_output(U1, 26)
    assert tail == {'uuid': U1, 'output': 'COMPUTE-AGENT-GUEST-READY\n', 'size': 126,
                    'truncated': True}


def test_guest_bytes_that_are_not_text_are_replaced_not_raised(agent):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    _console(agent, U1, b'ok \xff\xfe\x00 done')
    assert agent.manager.requests.console_output(U1)['output'] == 'ok \ufffd\ufffd\x00 done'


def test_a_symlinked_console_log_is_not_followed(agent, tmp_path):
    agent.wait_job(agent.manager.requests.boot_instance(boot_spec(U1))['job_id'])
    secret = tmp_path / 'secret'
    secret.write_text('host secret')
    os.symlink(secret, os.path.join(agent.driver.instance_dir(U1), 'console.log'))
    with pytest.raises(exception.AgentError) as err:
        agent.manager.requests.console_output(U1)
    assert 'host secret' not in str(err.value)


def test_only_instances_the_node_holds(agent):
    with pytest.raises(exception.InstanceNotFound):
        agent.manager.requests.console_output(U2)


@pytest.mark.parametrize('value', [0, -1, 1.5, '10', True, schema.MAX_CONSOLE_BYTES + 1])
def test_max_bytes_is_checked_at_the_endpoint(value):
    with pytest.raises(exception.InvalidSpec, match='max_bytes'):
        schema.validate('get_console_output', {'uuid': U1, 'max_bytes': value})
