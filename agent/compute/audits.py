"""Resource audits: usage re-derived from one hypervisor listing and one storage listing."""
import dataclasses
import logging
from typing import Callable

from agent import exception
from agent import resources
from agent.compute import core as coremod
from agent.storage import backend as storage_backend
from agent.virt import driver as vdriver

LOG = logging.getLogger(__name__)


class Audits:
    """Corrects the resource tracker from listings. ``clean_listing(infos)`` returns the
    listing less domains it removed (failed boots' remnants)."""

    def __init__(self, core: coremod.Core,
                 clean_listing: Callable[[list[vdriver.InstanceInfo]],
                                         list[vdriver.InstanceInfo]]):
        self._core = core
        self._clean_listing = clean_listing

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
            with core.auditing() as token:
                return self.audit(token=token)
        if infos is None:
            infos = core.driver.list_instances()
        if inventory is None:
            inventory = core.storage.inventory(fresh=True)
        observed = {}
        for info in infos:
            if not info.ours:
                continue
            inst = core.instances.get(info.uuid)
            sizes = inst.sizes if inst is not None and inst.sizes else (info.sizes or {})
            observed[info.uuid] = resources.Amounts(sizes.get('vcpus', 0),
                                                    sizes.get('memory_mb', 0), 0)
        for uuid, disk in inventory.disks.items():
            held = observed.get(uuid, resources.Amounts())
            observed[uuid] = dataclasses.replace(held, disk_gb=-(-disk.size // storage_backend.GiB))
        return core.tracker.apply_audit(token, observed, core.busy(),
                                        disk_gb=inventory.instance_bytes // storage_backend.GiB)

    def periodic_audit(self) -> list[str]:
        """One pass of the periodic audit. Its listing also finds the domains failed boots
        could not remove, and removes them."""
        core = self._core
        with core.tracer.bind_track('audit'), core.auditing() as token:
            infos = self._clean_listing(core.driver.list_instances())
            return self.audit(infos, token=token)

    def run(self, interval: float) -> None:
        """The periodic audit loop; run it in its own (green)thread."""
        while True:
            self._core.runtime.sleep(interval)
            try:
                self.periodic_audit()
            except exception.AgentError as exc:
                LOG.warning('resource audit skipped: %s', exc)
            except Exception:
                LOG.exception('resource audit failed')
