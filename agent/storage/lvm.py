"""The LVM backend: one LV per instance root disk in ``[lvm] volume_group``.

LVs are named ``ca-<uuid>-root`` and tagged ``compute-agent`` and ``ca-instance-<uuid>``; the
agent recognises its LVs by those tags, never by name. Every question about LVs and VG capacity
is answered from one ``lvs`` plus one ``vgs`` over the whole VG, shared by concurrent callers
(``SharedSweep``); the agent's own lvcreate/lvremove invalidate it.
"""
import dataclasses
import logging
import os

from agent import crashpoints
from agent import exception
from agent.storage import backend
from agent.storage import lvm_report
from agent.storage import operations
from agent.storage import sweep

LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Report:
    """One listing of the volume group: its LVs (by name) and the VG itself."""
    vg: lvm_report.VolumeGroup
    lvs: tuple[lvm_report.LogicalVolume, ...]


lv_name = operations.lv_name


class LvmBackend(backend.StorageBackend):
    """Root disks as LVs of one volume group, tagged as ours; every question answered from one
    shared listing."""
    kind = 'lvm'

    def __init__(self, runner, volume_group: str, cache_seconds: float = 2.0,
                 wipe: str = 'zero', device_exists=os.path.exists):
        super().__init__()
        self._run = runner
        self.vg = volume_group
        self._wipe = wipe
        self._device_exists = device_exists
        self.zeroed = 0
        self._sweep = sweep.SharedSweep(self._fetch, cache_seconds)

    # -- the one listing ---------------------------------------------------------------------
    def _fetch(self) -> Report:
        lvs = self._run.check('lvs', {'vg': self.vg}, message=lvm_report.lvm_message)
        vgs = self._run.check('vgs', {'vg': self.vg}, message=lvm_report.lvm_message)
        vg = [v for v in lvm_report.parse_vgs(vgs.stdout) if v.name == self.vg]
        if not vg:
            raise exception.StorageError(reason='volume group %s not in the vgs report' % self.vg)
        return Report(vg=vg[0], lvs=tuple(lvm_report.parse_lvs(lvs.stdout)))

    def report(self) -> Report:
        """A listing of the VG (shared with concurrent callers; cached
        ``report_cache_seconds``)."""
        return self._sweep.get()

    def init(self) -> dict:
        try:
            return self.capacity()
        except exception.StorageError as exc:
            raise exception.ConfigError(reason='[lvm] volume_group %s is not usable: %s'
                                        % (self.vg, exc)) from None

    def capacity(self) -> dict:
        vg = self.report().vg
        return {'total': vg.size, 'free': vg.free}

    def disks(self) -> dict[str, backend.DiskInfo]:
        return self._disks(self.report())

    @staticmethod
    def _disks(report: Report) -> dict[str, backend.DiskInfo]:
        out = {}
        for lv in report.lvs:
            if backend.OWNER_TAG not in lv.tags:
                continue
            for tag in lv.tags:
                if tag.startswith(backend.INSTANCE_TAG_PREFIX):
                    uuid = tag[len(backend.INSTANCE_TAG_PREFIX):]
                    out[uuid] = backend.DiskInfo(uuid=uuid, name=lv.name, size=lv.size)
        return out

    def inventory(self, fresh: bool = False) -> backend.Inventory:
        """Instance disks may take the VG's size less the LVs that are not the agent's: a
        figure the agent's own creates and removes never move, so no race with them."""
        if fresh:
            self._sweep.invalidate()
        report = self.report()
        foreign = sum(lv.size for lv in report.lvs if backend.OWNER_TAG not in lv.tags)
        return backend.Inventory(disks=self._disks(report),
                                 instance_bytes=max(0, report.vg.size - foreign))

    # -- create / delete -------------------------------------------------------------------------
    def create_root_disk(self, uuid: str, size: int, image: str | None,
                         image_format: str = 'raw') -> backend.Disk:
        name = lv_name(uuid)
        try:
            self._run.check('lv_create', {'vg': self.vg, 'uuid': uuid, 'size': size},
                            instance=uuid, message=lvm_report.lvm_message)
        finally:
            self._sweep.invalidate()
        crashpoints.reached('disk.lvm.created', uuid)
        disk = backend.Disk(path='/dev/%s/%s' % (self.vg, name), format='raw', kind='block')
        if image:
            try:
                self._run.check('image_to_lv', {'vg': self.vg, 'uuid': uuid, 'image': image,
                                                'format': image_format}, instance=uuid)
            except exception.StorageError:
                LOG.warning('[instance: %s] writing the image failed; removing %s', uuid, name)
                self.delete_disks(uuid)
                raise
        LOG.info('[instance: %s] created LV %s/%s (%d bytes)', uuid, self.vg, name, size)
        return disk

    def adopt_disk(self, owner: str, uuid: str) -> backend.Disk:
        """One lvchange moves the instance tag from ``owner`` to ``uuid`` (atomic: a restart
        finds the LV either the spare's or the instance's). The LV keeps its name: names
        never matter, tags do."""
        try:
            res = self._run.check('lv_retag', {'vg': self.vg, 'uuid': uuid, 'owner': owner},
                                  instance=uuid, message=lvm_report.lvm_message)
        finally:
            self._sweep.invalidate()
        if 'changed' not in res.stdout:
            raise exception.StorageError(reason='no LV of %s in %s to hand over' % (owner, self.vg))
        crashpoints.reached('disk.lvm.adopted', uuid, owner)
        LOG.info('[instance: %s] took LV %s/%s of spare %s', uuid, self.vg, lv_name(owner), owner)
        return backend.Disk(path='/dev/%s/%s' % (self.vg, lv_name(owner)), format='raw',
                            kind='block')

    def delete_disks(self, uuid: str) -> None:
        """Remove the LVs tagged for this instance: selected by tag inside the one lvremove,
        so an LV the agent did not tag (even one with the same name) is never removed. With
        ``wipe`` zero, its blocks are zeroed first (a failure leaves the LV: never given
        back unwiped)."""
        if self._wipe == 'zero':
            disk = self._disks(self.report()).get(uuid)
            if disk is not None:
                self._zero(uuid, disk.name)
        res = self._run.run('lv_remove', {'vg': self.vg, 'uuid': uuid}, instance=uuid)
        self._sweep.invalidate()
        if res.rc:
            raise exception.StorageError(reason='lvremove failed (exit %d): %s'
                                         % (res.rc, lvm_report.lvm_message(res.stderr)))
        if res.stdout.strip():
            LOG.info('[instance: %s] removed its LV from %s', uuid, self.vg)
        crashpoints.reached('disk.lvm.deleted', uuid)

    def _zero(self, uuid: str, name: str) -> None:
        if not self._device_exists('/dev/%s/%s' % (self.vg, name)):
            # Not active (a node whose LVM cannot activate LVs): nothing was written to it
            # through this node.
            LOG.warning('[instance: %s] LV %s/%s is not active: removed without zeroing',
                        uuid, self.vg, name)
            return
        self._run.check('lv_zero', {'vg': self.vg, 'lv': name}, instance=uuid)
        self.zeroed += 1

    def stats(self) -> dict:
        """Counters: listings made and shared, commands by name, LVs zeroed."""
        return {'sweeps': self._sweep.runs, 'sweeps_shared': self._sweep.shared,
                'zeroed': self.zeroed}
