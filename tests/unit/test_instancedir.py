"""Marked instance directories are made and removed atomically: a crash leaves a directory
whole (marked) or under a temporary name that the next start sweeps, never an unmarked one."""
import os
import uuid as uuidlib

import pytest

from agent import exception
from agent import instancedir

U1 = str(uuidlib.uuid4())


def test_a_directory_appears_with_its_marker_and_nothing_temporary_is_left(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    path = dirs.create(U1)
    assert os.listdir(tmp_path) == [U1]
    with open(os.path.join(path, instancedir.MARKER)) as f:
        assert f.read() == U1 + '\n'
    assert dirs.create(U1) == path             # kept, not made again
    assert dirs.owned() == {U1: path}


def test_what_an_interrupted_create_or_removal_left_is_swept_only_if_marked(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    made = tmp_path / ('.making-%s-0a1b2c3d' % U1)       # a create killed before its rename
    made.mkdir()
    (made / instancedir.MARKER).write_text(U1 + '\n')
    other = str(uuidlib.uuid4())
    removing = tmp_path / ('.removing-%s-deadbeef' % other)   # a removal killed half-way
    removing.mkdir()
    (removing / instancedir.MARKER).write_text(other + '\n')
    (removing / 'console.log').write_text('x')
    stranger = tmp_path / ('.making-%s-00000000' % other)  # not marked: not ours
    stranger.mkdir()
    (stranger / 'notes').write_text('an operator\'s')
    assert sorted(dirs.sweep()) == sorted([made.name, removing.name])
    assert os.listdir(tmp_path) == [stranger.name]
    assert dirs.owned() == {}
    dirs.create(U1)                              # the uuid is free to make again
    assert dirs.owned() == {U1: dirs.path(U1)}


def test_a_removal_renames_first_and_leaves_nothing(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    path = dirs.create(U1)
    with open(os.path.join(path, 'console.log'), 'w') as f:
        f.write('boot')
    ops = []
    dirs._execute = lambda op, fn, *args: (ops.append(op), fn(*args))[1]
    dirs.remove(U1)
    assert os.listdir(tmp_path) == [] and ops == ['dir.remove']


def test_an_unmarked_directory_of_that_name_is_refused_and_kept(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    os.makedirs(dirs.path(U1))
    with pytest.raises(exception.DirectoryNotOurs):
        dirs.create(U1)
    dirs.remove(U1)
    assert os.listdir(tmp_path) == [U1] and os.listdir(dirs.path(U1)) == []


def test_directories_are_roots_alone_and_an_older_agents_are_tightened(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    assert os.stat(dirs.create(U1)).st_mode & 0o777 == 0o700
    older = str(uuidlib.uuid4())                  # as an agent before this one made it
    os.makedirs(dirs.path(older), 0o755)
    with open(os.path.join(dirs.path(older), instancedir.MARKER), 'w') as f:
        f.write(older + '\n')
    os.chmod(dirs.path(older), 0o755)
    os.makedirs(str(tmp_path / 'not-ours'), 0o755)
    assert dirs.tighten() == 1
    assert os.stat(dirs.path(older)).st_mode & 0o777 == 0o700
    assert os.stat(str(tmp_path / 'not-ours')).st_mode & 0o777 == 0o755     # not ours: kept
    os.chmod(dirs.path(older), 0o755)
    dirs.create(older)                              # kept, and tightened
    assert os.stat(dirs.path(older)).st_mode & 0o777 == 0o700


def test_with_qemus_group_qemu_may_enter_and_an_older_root_only_directory_is_opened_to_it(
        tmp_path):
    # As root any gid will do; otherwise a group of ours (chown to it is allowed).
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    dirs = instancedir.InstanceDirs(str(tmp_path), gid=gid)
    st = os.stat(dirs.create(U1))
    assert (st.st_mode & 0o777, st.st_gid) == (0o710, gid)
    older = str(uuidlib.uuid4())                  # made when QEMU ran as root: 0700, root's group
    os.makedirs(dirs.path(older), 0o700)
    with open(os.path.join(dirs.path(older), instancedir.MARKER), 'w') as f:
        f.write(older + '\n')
    os.chmod(dirs.path(older), 0o755)
    assert dirs.tighten() == 1
    st = os.stat(dirs.path(older))
    assert (st.st_mode & 0o777, st.st_gid) == (0o710, gid)
    assert dirs.tighten() == 0


def test_a_resumed_spares_directory_becomes_a_link_its_console_rolls_over_through(tmp_path):
    """virtlogd rolls a console log over by the path QEMU was started with (the spare's):
    rename it to .0, then create it anew. Through the link both land in the instance's
    directory. The link is nobody's directory, and goes with the instance's."""
    dirs = instancedir.InstanceDirs(str(tmp_path))
    spare, inst, other = U1, str(uuidlib.uuid4()), str(uuidlib.uuid4())
    dirs.create(spare)
    dirs.create(inst)
    dirs.create(other)
    (tmp_path / spare / 'console.log').write_text('booted as the spare\n')
    os.rename(tmp_path / spare / 'console.log', tmp_path / inst / 'console.log')
    dirs.remove(spare, link_to=inst)
    assert os.readlink(tmp_path / spare) == inst
    # what virtlogd does at 1 MiB, by the spare's path
    os.rename(os.path.join(dirs.path(spare), 'console.log'),
              os.path.join(dirs.path(spare), 'console.log.0'))
    with open(os.path.join(dirs.path(spare), 'console.log'), 'a') as f:
        f.write('after the rollover\n')
    assert sorted(os.listdir(tmp_path / inst)) == ['.compute-agent-instance', 'console.log',
                                                   'console.log.0']
    assert set(dirs.owned()) == {inst, other}          # not a directory of its own
    assert dirs.sweep() == []                          # its instance is there: kept
    with pytest.raises(exception.DirectoryNotOurs):
        dirs.create(spare)
    dirs.remove(other)
    assert os.path.islink(tmp_path / spare)
    dirs.remove(inst)
    assert os.listdir(tmp_path) == []


def test_a_console_link_whose_instance_went_is_swept_and_no_other_link_is(tmp_path):
    dirs = instancedir.InstanceDirs(str(tmp_path))
    gone, kept = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    dirs.create(kept)
    os.symlink(gone, tmp_path / U1)                    # left by a crash after the instance's removal
    os.symlink(kept, tmp_path / str(uuidlib.uuid4()))
    os.symlink('/etc', tmp_path / str(uuidlib.uuid4()))        # not one of ours: not touched
    os.symlink(gone, tmp_path / 'not-a-uuid')
    assert dirs.sweep() == [U1]
    assert len(os.listdir(tmp_path)) == 4
