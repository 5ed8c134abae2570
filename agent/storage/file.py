"""The file backend: a qcow2 per instance in ``[DEFAULT] instances_path/<uuid>/disk.qcow2``.

With an image the qcow2 is an overlay over it (the image is never written); without one it is
blank. Capacity is the instances filesystem's (statvfs): no command runs for it.
"""
import logging
import os

from agent import crashpoints
from agent import exception
from agent import images
from agent import instancedir
from agent import spec as specmod
from agent.storage import backend
from agent.storage import operations

LOG = logging.getLogger(__name__)

DISK_NAME = operations.DISK_FILE
DISK_MODE = 0o600       # qemu-img makes it 0644; libvirt chowns it to QEMU while it runs


class FileBackend(backend.StorageBackend):
    """Root disks as sparse files in the marked instance directories (no LVM)."""
    kind = 'file'

    def __init__(self, runner, dirs: instancedir.InstanceDirs, reserved_bytes: int = 0):
        super().__init__()
        self._run = runner
        self._dirs = dirs
        self._path = dirs.base
        self._reserved = reserved_bytes

    def init(self) -> dict:
        os.makedirs(self._path, exist_ok=True)
        return self.capacity()

    def capacity(self) -> dict:
        st = os.statvfs(self._path)
        return {'total': st.f_blocks * st.f_frsize, 'free': st.f_bavail * st.f_frsize}

    def _disk_path(self, uuid: str) -> str:
        return os.path.join(self._path, uuid, DISK_NAME)

    def disks(self) -> dict[str, backend.DiskInfo]:
        out = {}
        for uuid in os.listdir(self._path):
            # Instances' and spares' directories only: not one being made or removed under a
            # temporary name (agent.instancedir; an audit during a removal counted its disk
            # as a second one), nor a resumed hot spare's console link (its instance's
            # directory, listed under its own name).
            entry = os.path.join(self._path, uuid)
            if not specmod.is_canonical_uuid(uuid) or os.path.islink(entry):
                continue
            path = self._disk_path(uuid)
            if os.path.isfile(path):
                out[uuid] = backend.DiskInfo(uuid=uuid, name=path, size=images.virtual_size(path))
        return out

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def inventory(self, fresh: bool = False) -> backend.Inventory:
        """Instance disks may take the free space plus what the agent's own disk files already
        take (their allocated blocks: qcow2 files are thin), less the reserve kept for the
        journal, console logs and the agent."""
        disks = self.disks()
        own = 0
        for info in disks.values():
            try:
                own += os.stat(info.name).st_blocks * 512
            except FileNotFoundError:
                pass
        return backend.Inventory(
            disks=disks, instance_bytes=max(0, self.capacity()['free'] + own - self._reserved))

    def create_root_disk(self, uuid: str, size: int, image: str | None,
                         image_format: str = 'raw') -> backend.Disk:
        path = self._disk_path(uuid)
        with backend.all_or_nothing(lambda: self.delete_disks(uuid), path):
            self._dirs.create(uuid)
            self._run.check('qcow2_create', {'uuid': uuid, 'size': size, 'image': image,
                                             'format': image_format}, instance=uuid)
            self._dirs.execute('disk.chmod', os.chmod, path, DISK_MODE)
            crashpoints.reached('disk.file.created', uuid)
        LOG.info('[instance: %s] created %s (%d bytes)', uuid, path, size)
        return backend.Disk(path=path, format='qcow2', kind='file',
                            backing=(image, image_format) if image else None)

    def adopt_disk(self, owner: str, uuid: str) -> backend.Disk:
        """A rename into the instance's marked directory (same filesystem: atomic)."""
        path = self._disk_path(uuid)

        def adopt():
            self._dirs.create_here(uuid)
            os.rename(self._disk_path(owner), path)
        try:
            self._dirs.execute('disk.adopt', adopt)
            crashpoints.reached('disk.file.adopted', uuid, owner)
        except OSError as exc:
            raise exception.StorageError(reason='moving the disk of %s to %s: %s'
                                         % (owner, path, exc)) from None
        LOG.info('[instance: %s] took the disk of spare %s', uuid, owner)
        # No backing named here: a restore takes the spare's saved XML, which has it.
        return backend.Disk(path=path, format='qcow2', kind='file')

    def delete_disks(self, uuid: str) -> None:
        self._dirs.execute('disk.delete', self._unlink, self._disk_path(uuid))
        crashpoints.reached('disk.file.deleted', uuid)
        self._dirs.remove_if_empty(uuid)   # only if nothing else of it is left
