"""``[DEFAULT] runtime``: read from the agent's own files before anything is patched."""
from agent.cmd import agent as agent_cmd


def _conf(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_eventlet_is_the_default(tmp_path):
    conf = _conf(tmp_path, 'a.conf', '[DEFAULT]\nhost = n1\n')
    assert agent_cmd.runtime_from_argv(['--config-file', conf]) == 'eventlet'


def test_read_from_the_files_as_the_full_parse_reads_them(tmp_path):
    """The last file wins, ``--config-file=`` and ``--config-dir`` count, and the options
    only the full parse knows (logging's) are left alone."""
    first = _conf(tmp_path, 'a.conf', '[DEFAULT]\nruntime = eventlet\n[libvirt]\nvirt_type = qemu\n')
    second = _conf(tmp_path, 'b.conf', '[DEFAULT]\nruntime = threading\n')
    argv = ['--debug', '--config-file', first, '--log-file', '/dev/null',
            '--config-file=%s' % second]
    assert agent_cmd.runtime_from_argv(argv) == 'threading'
    assert agent_cmd.runtime_from_argv(['--config-file', second, '--config-file', first]) \
        == 'eventlet'
    confd = tmp_path / 'conf.d'
    confd.mkdir()
    _conf(confd, '50-runtime.conf', '[DEFAULT]\nruntime = threading\n')
    assert agent_cmd.runtime_from_argv(['--config-file', first, '--config-dir', str(confd)]) \
        == 'threading'


def test_a_bad_value_stops_the_start_before_anything_is_patched(tmp_path, capsys):
    bad = _conf(tmp_path, 'a.conf', '[DEFAULT]\nruntime = asyncio\n')
    assert agent_cmd.main(['--config-file', bad]) == 1
    err = capsys.readouterr().err
    assert 'cannot start' in err and 'runtime' in err and 'asyncio' in err
    from eventlet import patcher
    assert not patcher.is_monkey_patched('thread')


def test_an_unreadable_file_stops_the_start(tmp_path, capsys):
    assert agent_cmd.main(['--config-file', str(tmp_path / 'missing.conf')]) == 1
    assert 'missing.conf' in capsys.readouterr().err
