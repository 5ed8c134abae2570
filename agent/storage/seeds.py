"""NoCloud seed disks: ``<instance dir>/seed.iso``, one per instance that asks for one.

The agent writes the seed's files (``agent.nocloud``) into the instance's marked directory,
the command worker makes the ISO of them (``seed_create``: genisoimage, no shell), and the
staging files go. The seed is the instance's like its console log: it goes with the directory.
It is QEMU's to read (root's, QEMU's group, 0640; libvirt leaves it as it is) and nobody's to
write: the guest gets it read-only.
"""
import logging
import os
import shutil

from agent import exception
from agent import instancedir
from agent import nocloud
from agent import spec as specmod
from agent.storage import backend
from agent.storage import operations

LOG = logging.getLogger(__name__)
SEED_SIZE = 1024 * 1024     # bytes; at most 64 KiB of user data and a few small files


class SeedDisks:
    def __init__(self, runner, dirs: instancedir.InstanceDirs, execute=None):
        """``execute(op, fn, *args)``: where the file work runs (the agent's work queue)."""
        self._run = runner
        self._dirs = dirs
        self._execute = execute or (lambda op, fn, *args: fn(*args))

    def path(self, uuid: str) -> str:
        return os.path.join(self._dirs.path(uuid), operations.SEED_FILE)

    def create(self, spec: specmod.BootSpec) -> backend.Disk:
        """Build instance ``spec.uuid``'s seed; on any failure nothing of it is left."""
        uuid = spec.uuid
        with backend.all_or_nothing(lambda: self.delete(uuid), 'seed of %s' % uuid):
            self._dirs.create(uuid)
            self._execute('seed.stage', self._stage, uuid, nocloud.seed_files(spec))
            self._run.check('seed_create', {'uuid': uuid}, instance=uuid)
            self._execute('seed.finish', self._finish, uuid)
        LOG.info('[instance: %s] seed %s made', uuid, self.path(uuid))
        return backend.Disk(path=self.path(uuid), format='raw', kind='file', readonly=True)

    def delete(self, uuid: str) -> None:
        """Remove the seed and its staging files, if there are any."""
        self._execute('seed.delete', self._delete, uuid)

    def _staging(self, uuid: str) -> str:
        return os.path.join(self._dirs.path(uuid), operations.SEED_STAGING)

    def _stage(self, uuid: str, files: dict[str, bytes]) -> None:
        staging = self._staging(uuid)
        shutil.rmtree(staging, ignore_errors=True)      # what an interrupted build left
        os.mkdir(staging, 0o700)
        for name, data in files.items():
            fd = os.open(os.path.join(staging, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(data)

    def _finish(self, uuid: str) -> None:
        shutil.rmtree(self._staging(uuid), ignore_errors=True)
        path = self.path(uuid)
        # Every seed the same size: a restored guest reads the instance's seed through the
        # device it saw the spare's on (agent.warm.restore), whose size it knows already.
        if os.path.getsize(path) > SEED_SIZE:
            raise exception.StorageError(reason='the seed of %s is larger than %d bytes'
                                         % (uuid, SEED_SIZE))
        os.truncate(path, SEED_SIZE)
        if self._dirs.gid is not None:
            os.chown(path, 0, self._dirs.gid)
            os.chmod(path, 0o640)
        else:
            os.chmod(path, 0o600)

    def _delete(self, uuid: str) -> None:
        shutil.rmtree(self._staging(uuid), ignore_errors=True)
        try:
            os.unlink(self.path(uuid))
        except FileNotFoundError:
            pass
