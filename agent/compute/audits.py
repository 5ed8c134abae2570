"""Resource audits: usage re-derived from one hypervisor listing and one storage listing."""
import dataclasses
import logging
import time
from typing import Callable

from agent import exception
from agent import jobs as jobsmod
from agent import resources
from agent.compute import core as coremod
from agent.compute import instance as instancemod
from agent.compute import states
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)


class Audits:
    """Corrects the resource tracker from listings, and removes what failed boots left in
    them. ``making()``: uuids of spares being made (agent.warm), half-made like a booting
    instance; a hot spare's paused domain holds its memory."""

    def __init__(self, core: coremod.Core, making: Callable[[], set[str]] = set,
                 hot_memory: Callable[[], dict[str, int]] = dict):
        """``hot_memory()``: hot spare uuid -> the memory it holds (agent.warm)."""
        self._core = core
        self._making = making
        self._hot_memory = hot_memory
        self._stopping = False
        self._busy = False

    def busy(self) -> set[str]:
        """What audits leave alone: instances a boot or delete works on, spares being
        made."""
        return self._core.busy() | self._making()

    def auditing(self):
        """Begin an audit before reading the listings it will judge (``audit``)."""
        return self._core.tracker.auditing(busy=self.busy())

    def audit(self, infos: list[vdriver.InstanceInfo] | None = None,
              inventory: storage_backend.Inventory | None = None,
              token: resources.AuditToken | None = None) -> list[str]:
        """Re-derive usage from one hypervisor listing and one storage listing; correct the
        tracker where it differs (a report goes out only then). Returns the uuids corrected.

        Listings handed in need the ``token`` of an audit begun before they were read: a boot
        that ended between an older listing and the audit would otherwise be judged by a
        listing that never saw its domain.
        """
        core = self._core
        if token is None:
            if infos is not None or inventory is not None:
                raise ValueError('an audit of listings handed in needs its token')
            with self.auditing() as token:
                return self.audit(token=token)
        if infos is None:
            infos = core.driver.list_instances()
        if inventory is None:
            inventory = core.storage.inventory(fresh=True)
        observed = {}
        hot = self._hot_memory()
        for info in infos:
            if info.spare is not None and info.uuid in hot:     # a paused domain's memory
                observed[info.uuid] = resources.Amounts(0, hot[info.uuid], 0)
            if not info.ours:
                continue
            inst = core.instances.get(info.uuid)
            sizes = inst.sizes if inst is not None and inst.sizes else (info.sizes or {})
            observed[info.uuid] = resources.Amounts(sizes.get('vcpus', 0),
                                                    sizes.get('memory_mb', 0), 0)
        for uuid, disk in inventory.disks.items():
            held = observed.get(uuid, resources.Amounts())
            observed[uuid] = dataclasses.replace(held, disk_gb=-(-disk.size // storage_backend.GiB))
        return core.tracker.apply_audit(token, observed, self.busy(),
                                        disk_gb=inventory.instance_bytes // storage_backend.GiB)

    def periodic_audit(self) -> list[str]:
        """One pass of the periodic audit. Its listing also finds the domains failed boots
        could not remove, and removes them."""
        core = self._core
        with core.tracer.bind_track('audit'), self.auditing() as token:
            infos = self.without_failed_boot_remnants(core.driver.list_instances())
            return self.audit(infos, token=token)

    def without_failed_boot_remnants(self, infos: list[vdriver.InstanceInfo]
                                     ) -> list[vdriver.InstanceInfo]:
        """The listing less the domains of failed boots, which are removed."""
        kept = []
        for info in infos:
            inst = self._core.instances.get(info.uuid) if info.ours else None
            if inst is None or not self._remove_failed_boot_remnant(inst):
                kept.append(info)
        return kept

    def _remove_failed_boot_remnant(self, inst: instancemod.Instance) -> bool:
        """A domain listed for an instance whose boot failed: the boot's undefine was lost
        with the connection (or its define's answer was). Remove it; the job stays failed."""
        core = self._core
        if inst.task is not None or inst.vm_state != states.ERROR or inst.boot_job is None:
            return False
        try:
            job = core.jobs.get(inst.boot_job)
        except exception.JobNotFound:
            return False
        if job.state != jobsmod.FAILED:
            return False
        LOG.warning('[instance: %s] removing the domain its failed boot left', inst.uuid)
        return core.attempt(inst.uuid, 'remove domain of a failed boot', core.driver.destroy,
                            inst.uuid, job=job)

    def run(self, interval: float) -> None:
        """The periodic audit loop, until ``stop``; run it in its own (green)thread."""
        while not self._stopping:
            self._core.runtime.sleep(interval)
            if self._stopping:
                break
            self._busy = True
            try:
                self.periodic_audit()
            except exception.AgentError as exc:
                LOG.warning('resource audit skipped: %s', exc)
            except Exception:
                LOG.exception('resource audit failed')
            finally:
                self._busy = False

    def stop(self, timeout: float = 30.0) -> bool:
        """The agent stops: no audit is begun from now on; one under way may finish (its
        listings need libvirt still connected). True once none runs."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._busy and time.monotonic() < deadline:
            self._core.runtime.sleep(0.05)
        return not self._busy
