"""Which libvirt domains are this node's, as which instance, and their handles: the one place
the libvirt driver keeps ownership (the driver, its listing and its spares use it; its
invariants are kept here only).

A cold instance runs as a domain of its own uuid. A warm one runs under its spare's libvirt
uuid and name (libvirt restores a saved image under no other): for those only, domain uuid
<-> instance uuid are mapped. Domains libvirt holds that are not ours are remembered by uuid
(from listings and DEFINED events): a boot of such a uuid is refused without a call, and no
call ever touches them.
"""
import contextlib
import logging

from agent import exception
from agent import spec as specmod
from agent.virt.libvirt import config as vconfig

LOG = logging.getLogger(__name__)

# What an event of a domain means to the agent (``Domains.observe``).
NOT_OURS, UNDEFINED_BY_US, VANISHED, OURS = 'not ours', 'undefined by us', 'vanished', 'ours'


class Domains:
    """The ownership registry of one libvirt driver."""

    def __init__(self, host, node: str, restored_as):
        """``host``: agent.virt.libvirt.host.Host; ``node``: this node's host name (in the
        metadata of every domain it owns); ``restored_as(uuid)``: the domain uuid a warm
        instance's marked directory records, or None."""
        self._host = host
        self._node = node
        self._restored_as = restored_as
        # instance uuid -> (connection epoch, virDomain): no lookup on delete; an object of
        # an older connection is dead and never used.
        self._handles: dict = {}
        self._ours: set[str] = set()            # domain uuids the agent made or adopted
        self._defining: set[str] = set()        # uuids whose defineXML is under way
        self._foreign: dict[str, str] = {}      # domain uuid -> name, not ours
        self._own_undefines: set[str] = set()   # UNDEFINED events we caused: not "vanished"
        self._inst_of: dict[str, str] = {}      # warm: domain uuid -> instance uuid
        self._dom_of: dict[str, str] = {}       # warm: instance uuid -> domain uuid
        self._spares: set[str] = set()          # spares being made (their events apart)
        # instance uuid -> (its restore XML or its maker, a resumed spare's live metadata still
        # to set or None), until persist; dropped with the domain (``forget``)
        self._restored: dict = {}

    # -- names ------------------------------------------------------------------------------
    def instance(self, dom_uuid: str) -> str:
        """The instance uuid domain ``dom_uuid`` runs (itself unless warm)."""
        return self._inst_of.get(dom_uuid, dom_uuid)

    def domain(self, uuid: str) -> str:
        """The domain uuid instance ``uuid`` runs as (itself unless warm)."""
        return self._dom_of.get(uuid, uuid)

    def is_ours(self, dom_uuid: str) -> bool:
        return dom_uuid in self._ours

    def is_spare(self, dom_uuid: str) -> bool:
        """A spare being made (a saved one has no domain)."""
        return dom_uuid in self._spares

    def check_free(self, uuid: str) -> None:
        """UuidTaken / UuidInUse if a boot of ``uuid`` would touch a domain it must not."""
        name = self._foreign.get(uuid)
        if name is not None:
            raise exception.UuidTaken(uuid=uuid, name=name)
        # A warm instance runs under its spare's uuid; a spare being made has its own: a
        # define with that uuid would replace that domain's definition.
        if uuid in self._inst_of:
            raise exception.UuidInUse(uuid=uuid, what='the domain of instance %s'
                                      % self._inst_of[uuid])
        if uuid in self._spares:
            raise exception.UuidInUse(uuid=uuid, what='a spare being made')

    # -- handles ----------------------------------------------------------------------------
    def cache(self, uuid: str, epoch: int, dom) -> None:
        """Keep instance ``uuid``'s domain object of connection ``epoch``."""
        self._handles[uuid] = (epoch, dom)

    def handle(self, uuid: str):
        """The domain of ours running instance ``uuid``, or None: the cached object of the
        current connection (no call), else one lookup (plus one XMLDesc the first time, to
        check our metadata). A domain with this uuid that is not ours is never returned."""
        epoch, dom = self._handles.get(uuid, (None, None))
        if dom is not None and epoch == self._host.epoch:
            return dom
        epoch = self._host.epoch
        try:
            dom = self._host.call('lookupByUUIDString', self._host.conn().lookupByUUIDString,
                                  self.domain(uuid), epoch=epoch)
        except exception.DomainNotFound:
            return None
        if not self.owned(uuid, dom):
            LOG.warning('[instance: %s] the domain with this uuid (%s) is not ours: left '
                        'untouched', uuid, dom.name())
            return None
        self._handles[uuid] = (epoch, dom)
        return dom

    def handle_or_raise(self, uuid: str):
        """``handle``, or DomainNotFound."""
        dom = self.handle(uuid)
        if dom is None:
            raise exception.DomainNotFound(op='lookup',
                                           reason='the hypervisor holds no domain of ours '
                                                  'with uuid %s' % uuid)
        return dom

    def owned(self, uuid: str, dom) -> bool:
        """Whether ``dom`` runs instance ``uuid`` of this agent: made or adopted by it, or
        carrying its metadata naming this uuid and this node (one XMLDesc call, never on the
        boot's hot path)."""
        dom_uuid = dom.UUIDString()
        if dom_uuid in self._foreign:
            return False
        if dom_uuid in self._ours:
            return self.instance(dom_uuid) == uuid
        meta = vconfig.parse_metadata(self._host.call('XMLDesc', dom.XMLDesc, 0))
        if self.instance_of(meta, dom_uuid) == uuid:
            self.adopt(uuid, dom_uuid)
            self._foreign.pop(dom_uuid, None)
            return True
        self._foreign[dom_uuid] = dom.name()
        return False

    def instance_of(self, meta: dict | None, dom_uuid: str) -> str | None:
        """The instance uuid a domain's metadata names, if it is an instance of this node's:
        a cold one carries its own uuid; a warm one the uuid of the spare it runs as, which
        the instance's marked directory records too (copied metadata is not enough)."""
        if not meta or meta.get('host') != self._node or meta.get('role') == 'spare':
            return None
        uuid = meta.get('uuid')
        if uuid != dom_uuid and not (meta.get('spare') == dom_uuid
                                     and specmod.is_canonical_uuid(uuid)
                                     and self._restored_as(uuid) == dom_uuid):
            return None
        # One domain per instance: a second one naming an instance that already runs as
        # another domain of ours (copied metadata) is not taken.
        held = self._dom_of.get(uuid, uuid if uuid in self._ours else None)
        return uuid if held in (None, dom_uuid) else None

    def is_node_spare(self, meta: dict | None, dom_uuid: str) -> bool:
        """Whether a domain's metadata makes it a spare of this node."""
        return bool(meta and meta.get('host') == self._node and meta.get('role') == 'spare'
                    and meta.get('uuid') == dom_uuid)

    def adopt(self, uuid: str, dom_uuid: str) -> None:
        """Instance ``uuid`` runs as domain ``dom_uuid``, ours."""
        self._ours.add(dom_uuid)
        if dom_uuid != uuid:
            self._inst_of[dom_uuid] = uuid
            self._dom_of[uuid] = dom_uuid

    def forget(self, dom_uuid: str) -> None:
        """A domain of ours is gone: drop it (and its instance mapping)."""
        self._ours.discard(dom_uuid)
        uuid = self._inst_of.pop(dom_uuid, None)
        if uuid is not None:
            self._dom_of.pop(uuid, None)
            self._restored.pop(uuid, None)

    # -- defines and undefines --------------------------------------------------------------
    @contextlib.contextmanager
    def defining(self, uuid: str):
        """Around a defineXML of ``uuid``: its DEFINED event is not a foreign domain's."""
        self._defining.add(uuid)
        try:
            yield
        finally:
            self._defining.discard(uuid)

    def defined(self, uuid: str, epoch: int, dom) -> None:
        """Our define of ``uuid`` succeeded (inside ``defining``: events see it ours)."""
        self._ours.add(uuid)
        self._foreign.pop(uuid, None)
        self._handles[uuid] = (epoch, dom)

    def not_ours(self, uuid: str, name: str) -> None:
        """Our define turned out to update a domain someone else runs: never touched."""
        self._ours.discard(uuid)
        self._handles.pop(uuid, None)
        self._foreign[uuid] = name

    def undefine(self, uuid: str, dom) -> None:
        """Undefine instance ``uuid``'s domain (its UNDEFINED event is ours, not a
        vanishing); gone already counts as done."""
        dom_uuid = self.domain(uuid)
        self._own_undefines.add(dom_uuid)
        try:
            self._host.call('undefine', dom.undefine)
        except exception.DomainNotFound:      # gone (a transient domain, once destroyed)
            self._own_undefines.discard(dom_uuid)
        except exception.HypervisorError:
            self._own_undefines.discard(dom_uuid)
            raise
        self._handles.pop(uuid, None)
        self.forget(dom_uuid)

    # -- events and listings ----------------------------------------------------------------
    def observe(self, dom_uuid: str, name: str, defined: bool, undefined: bool) -> str:
        """A lifecycle event of domain ``dom_uuid``: NOT_OURS, UNDEFINED_BY_US, VANISHED (an
        undefine behind our back) or OURS."""
        if defined and dom_uuid not in self._ours and dom_uuid not in self._defining:
            self._foreign[dom_uuid] = name
        elif undefined:
            self._foreign.pop(dom_uuid, None)
        if not name.startswith(vconfig.DOMAIN_PREFIX) or dom_uuid in self._foreign:
            return NOT_OURS
        if not undefined:
            return OURS
        self._handles.pop(self.instance(dom_uuid), None)
        self.forget(dom_uuid)
        if dom_uuid in self._own_undefines:
            self._own_undefines.discard(dom_uuid)
            return UNDEFINED_BY_US
        return VANISHED

    def listed(self, foreign: dict[str, str]) -> None:
        """A whole listing's domains that are not ours (events since keep it current)."""
        self._foreign = foreign

    # -- spares and restores ----------------------------------------------------------------
    def spare_started(self, uuid: str) -> None:
        self._spares.add(uuid)

    def spare_gone(self, uuid: str) -> None:
        """Saved, removed, or its start failed: no spare being made any more."""
        self._spares.discard(uuid)

    def restored(self, uuid: str, xml, live=None) -> None:
        """Instance ``uuid`` was restored with ``xml`` (its persistent definition's), or
        resumed: ``xml`` is then a callable that builds it when it is needed, and ``live``
        (metadata, domain uuid) what its running definition must be told before persist."""
        self._restored[uuid] = (xml, live)

    def live_metadata(self, uuid: str):
        """(metadata, domain uuid) of a resumed instance whose live metadata is not set."""
        return self._restored.get(uuid, (None, None))[1]

    def metadata_set(self, uuid: str) -> None:
        """The live metadata of ``uuid`` names the instance now."""
        if uuid in self._restored:
            self._restored[uuid] = (self._restored[uuid][0], None)

    def take_restored(self, uuid: str):
        """The restore XML of ``uuid`` (or its maker), once."""
        return self._restored.pop(uuid, (None, None))[0]
