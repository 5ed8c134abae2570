"""The crash-point registry against the code, and what arming one does."""
import ast
import os
import pathlib
import signal

import pytest

from agent import crashpoints

AGENT = pathlib.Path(crashpoints.__file__).parent


def _points_in_code() -> dict[str, list[str]]:
    """point name -> files that call ``crashpoints.reached`` with it (a literal name)."""
    found: dict[str, list[str]] = {}
    for path in AGENT.rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == 'reached'
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == 'crashpoints'):
                arg = node.args[0]
                assert isinstance(arg, ast.Constant), '%s: a point is named by a literal' % path
                found.setdefault(arg.value, []).append(str(path.relative_to(AGENT)))
    return found


def test_every_point_in_the_code_is_registered_and_every_registered_point_is_in_the_code():
    in_code = _points_in_code()
    assert set(in_code) - set(crashpoints.POINTS) == set(), 'unregistered points'
    assert set(crashpoints.POINTS) - set(in_code) == set(), 'registered points never reached'


@pytest.fixture
def disarmed():
    yield
    crashpoints.arm(None)


def test_an_unknown_point_is_refused(disarmed):
    with pytest.raises(crashpoints.UnknownPoint):
        crashpoints.arm_from_env(True, {crashpoints.ENV_POINT: 'boot.defind'})
    assert crashpoints.armed() is None


def test_a_point_is_armed_only_with_debug(disarmed):
    env = {crashpoints.ENV_POINT: 'boot.defined'}
    with pytest.raises(crashpoints.NotAllowed):
        crashpoints.arm_from_env(False, env)
    assert crashpoints.armed() is None
    assert crashpoints.arm_from_env(False, {}) is None        # nothing armed: no debug needed
    assert crashpoints.arm_from_env(True, env) == 'boot.defined'


def test_other_points_and_other_uuids_pass(disarmed):
    crashpoints.arm('boot.defined', only_for='u-1')
    crashpoints.reached('boot.started', 'u-1')
    crashpoints.reached('boot.defined', 'u-2')
    crashpoints.reached('boot.defined')


def _child(env: dict, out: str) -> int:
    """In a forked child: arm from ``env``, pass one point, reach the armed one; the child's
    wait status. What it got past is written to ``out``."""
    pid = os.fork()
    if pid == 0:                      # the child: never returns into pytest
        code = 3
        try:
            crashpoints.arm_from_env(True, env)
            crashpoints.reached('boot.started', 'u-1')
            with open(out, 'a') as f:
                f.write('passed boot.started\n')
            crashpoints.reached('boot.defined', 'u-1')
            with open(out, 'a') as f:
                f.write('survived\n')
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def test_an_armed_point_kills_the_process_there_once_and_says_so(tmp_path):
    report, out = str(tmp_path / 'report'), str(tmp_path / 'out')
    env = {crashpoints.ENV_POINT: 'boot.defined', crashpoints.ENV_FOR: 'u-1',
           crashpoints.ENV_REPORT: report}
    status = _child(env, out)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    with open(out) as f:
        assert f.read() == 'passed boot.started\n'
    with open(report) as f:
        assert f.read().split()[0] == 'boot.defined'
    status = _child(env, out)          # restarted with the same environment: lives
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    other = dict(env, **{crashpoints.ENV_FOR: 'u-2', crashpoints.ENV_REPORT: report + '2'})
    status = _child(other, out)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert not os.path.exists(report + '2')
