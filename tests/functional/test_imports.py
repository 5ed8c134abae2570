"""The compute agent's process never loads the conductor's database stack (SQLAlchemy,
Alembic): what the agent imports, module by module, in a fresh interpreter."""
import json
import os
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DB_STACK = ('sqlalchemy', 'alembic')


def _loaded_after(modules: list[str]) -> list[str]:
    """The DB_STACK packages loaded once ``modules`` are imported, in a fresh interpreter."""
    code = ('import importlib, json, sys\n'
            'for m in %r: importlib.import_module(m)\n'
            'print(json.dumps(sorted({n.split(".")[0] for n in sys.modules} & set(%r))))'
            % (modules, DB_STACK))
    out = subprocess.run([sys.executable, '-c', code], cwd=TOP, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.splitlines()[-1])


def _agent_modules() -> list[str]:
    """Every module of the agent process: all of ``agent`` but the conductor's server side
    and the other commands."""
    skip = {'agent.conductor.db', 'agent.conductor.migrate', 'agent.conductor.schema',
            'agent.conductor.service', 'agent.conductor.workers', 'agent.cmd.conductor',
            'agent.cmd.ctl'}
    out = []
    for root, dirs, files in os.walk(os.path.join(TOP, 'agent')):
        dirs[:] = [d for d in dirs if d not in ('migrations', '__pycache__')]
        for f in files:
            if f.endswith('.py'):
                rel = os.path.relpath(os.path.join(root, f), TOP)[:-3].replace(os.sep, '.')
                name = rel[:-len('.__init__')] if rel.endswith('.__init__') else rel
                if name not in skip and not name.startswith('agent.ctl'):
                    out.append(name)
    return sorted(out)


def test_the_agent_process_never_imports_sqlalchemy_or_alembic():
    modules = _agent_modules()
    assert 'agent.service' in modules and 'agent.cmd.agent' in modules
    assert _loaded_after(['agent.cmd.agent', 'agent.service'] + modules) == []


@pytest.mark.parametrize('module', ['agent.conductor.service', 'agent.cmd.conductor'])
def test_the_conductor_does(module):
    # the check above sees them when they are there
    loaded = _loaded_after([module] + (['agent.conductor.service']
                                       if module == 'agent.cmd.conductor' else []))
    assert 'sqlalchemy' in loaded
