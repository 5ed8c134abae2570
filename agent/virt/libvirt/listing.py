"""The libvirt driver's listing: one getAllDomainStats call for every domain's state, and the
recognition of the domains of ours it has not seen before (by their metadata: an instance of
this node, cold or warm, or a spare of this node)."""
import dataclasses
import time

from agent import exception
from agent.virt import driver
from agent.virt.libvirt import config as vconfig
from agent.virt.libvirt import domains as vdomains
from agent.virt.libvirt import states as vstates


class Listing:
    """Lists the domains of one connection (``host``); what it learns goes to ``domains``."""

    def __init__(self, host, libvirt_mod, domains: vdomains.Domains):
        self._host = host
        self._lv = libvirt_mod
        self._domains = domains

    def list_instances(self, with_readiness: bool = False) -> list[driver.InstanceInfo]:
        """One getAllDomainStats call for every domain's state; domains with our name prefix
        never seen before get their XML read once to confirm they carry our metadata (and
        their agent channel's state is taken from it); with ``with_readiness`` the running
        ones of ours already known get one XMLDesc each for that state."""
        conn, epoch = self._host.conn(), self._host.epoch
        listed_at = time.time()
        stats = self._host.call('getAllDomainStats', conn.getAllDomainStats,
                                self._lv.VIR_DOMAIN_STATS_STATE, 0, epoch=epoch)
        out = []
        foreign = {}
        for dom, values in stats:
            dom_uuid = dom.UUIDString()
            power = vstates.from_state(self._lv, values.get('state.state', 0))
            info = driver.InstanceInfo(uuid=self._domains.instance(dom_uuid), name='',
                                       ours=self._domains.is_ours(dom_uuid),
                                       power_state=power, domain=dom.name(),
                                       listed_at=listed_at)
            try:
                if self._domains.is_spare(dom_uuid):
                    info = dataclasses.replace(info, spare='?')
                elif not info.ours and dom.name().startswith(vconfig.DOMAIN_PREFIX):
                    info = self._recognise(dom, info)
                elif info.ours and with_readiness and power == driver.RUNNING:
                    info = dataclasses.replace(info, ready=vconfig.agent_connected(
                        self._host.call('XMLDesc', dom.XMLDesc, 0)))
            except exception.DomainNotFound:
                continue        # gone since the listing was read: as if listed a moment later
            if info.ours:
                self._domains.cache(info.uuid, epoch, dom)   # this listing's connection's
            elif info.spare is None:
                foreign[dom_uuid] = dom.name()
            out.append(info)
        self._domains.listed(foreign)      # the whole picture (events since keep it current)
        return out

    def _recognise(self, dom, info: driver.InstanceInfo) -> driver.InstanceInfo:
        """A domain with our prefix the agent does not know: ours if its metadata names its
        uuid and this node (an agent never takes the domains another agent made, even on a
        shared libvirtd); one XMLDesc call."""
        xml = self._host.call('XMLDesc', dom.XMLDesc, 0)
        meta = vconfig.parse_metadata(xml)
        if self._domains.is_node_spare(meta, info.uuid):
            return dataclasses.replace(info, spare=meta.get('pool') or '?')   # not an instance
        uuid = self._domains.instance_of(meta, info.uuid)
        if uuid is None:
            return info
        self._domains.adopt(uuid, info.uuid)
        # Known instances: the manager holds name and sizes; these come from the metadata.
        return dataclasses.replace(
            info, uuid=uuid, ours=True, name=meta.get('name', ''),
            sizes={k: int(meta[k]) for k in ('vcpus', 'memory_mb', 'disk_gb')
                   if meta.get(k, '').isdigit()},
            ready=vconfig.agent_connected(xml) if info.power_state == driver.RUNNING else None)
