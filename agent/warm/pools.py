"""Warm pools: their flavors, and how a boot spec that names a pool is made whole (pure).

A pool's flavor is a boot spec without uuid and name. A boot spec that names a pool takes the
pool's flavor: a field it omits comes from the pool, a field it gives must equal the pool's (a
spare cannot become another flavor), and it may give no MAC (a restored guest keeps its
spare's). Anything else is refused with the reason, never silently changed.
"""
import dataclasses
import uuid as uuidlib

from agent import exception
from agent import spec as specmod
from agent.conf import warm as warmconf

# The spec fields a pool fixes (``nics`` apart: compared by type).
FLAVOR_FIELDS = ('vcpus', 'memory_mb', 'kernel', 'initrd', 'cmdline', 'image', 'disk_gb')


@dataclasses.dataclass(frozen=True)
class Pool:
    """One warm pool: its name, how many saved (``size``) and hot (``hot``) spares to keep,
    and its flavor as raw spec fields."""

    name: str
    size: int
    flavor: tuple[tuple[str, object], ...]     # (field, value) of FLAVOR_FIELDS, None omitted
    user_nics: int = 0
    identity: str = 'port'          # port | cloud-init (see [warm_pool:NAME] identity)
    identity_timeout: float = 300.0
    hot: int = 0

    @property
    def seeded(self) -> bool:
        """Whether its guests read a NoCloud seed (spares one of their own)."""
        return self.identity == 'cloud-init'

    def raw_spec(self, uuid: str, name: str | None = None) -> dict:
        """The flavor as a raw boot spec for ``uuid`` (validated like any other)."""
        raw = dict(self.flavor, uuid=uuid)
        if name is not None:
            raw['name'] = name
        if self.user_nics:
            raw['nics'] = [{'type': 'user'}] * self.user_nics
        return raw

    def fingerprint(self) -> list:
        """The flavor as plain data: a spare made for another one is not this pool's."""
        return [[f, v] for f, v in self.flavor] + [['user_nics', self.user_nics]] + (
            [['identity', self.identity]] if self.seeded else [])

    @property
    def disk_gb(self) -> int:
        return dict(self.flavor).get('disk_gb', 0)


def pool_from_options(name: str, options) -> Pool:
    """A pool from its [warm_pool:NAME] option group."""
    if not specmod.NAME_RE.fullmatch(name):
        raise exception.ConfigError(reason='[warm] pools: %r is not a valid pool name' % name)
    flavor = tuple((f, getattr(options, f)) for f in FLAVOR_FIELDS
                   if getattr(options, f) is not None)
    if options.hot and options.identity != 'port':
        raise exception.ConfigError(reason='[warm_pool:%s] hot: a hot spare becomes the '
                                           'instance through its identity port (identity = '
                                           'port); this pool\'s guests use %s'
                                    % (name, options.identity))
    return Pool(name=name, size=options.size, flavor=flavor, user_nics=options.user_nics,
                identity=options.identity, identity_timeout=options.identity_timeout,
                hot=options.hot)


def pools_from_conf(conf, limits: specmod.Limits) -> dict[str, Pool]:
    """The pools of ``[warm] pools`` (their groups registered here), each checked as a boot
    spec this node can boot; ConfigError naming what is wrong."""
    warmconf.register_pool_opts(conf)
    pools = {}
    for name in conf.warm.pools:
        pool = pool_from_options(name, conf[warmconf.pool_group(name)])
        check_pool(pool, limits)
        pools[name] = pool
    return pools


def check_pool(pool: Pool, limits: specmod.Limits) -> specmod.BootSpec:
    """The pool's flavor validated as a boot spec (ConfigError naming the pool if it is not
    one this node can boot)."""
    try:
        return specmod.validate_boot_spec(pool.raw_spec(str(uuidlib.uuid4())), limits)
    except exception.InvalidSpec as exc:
        raise exception.ConfigError(reason='[warm_pool:%s] %s' % (pool.name, exc)) from None


def apply(raw, pools: dict[str, Pool]):
    """``raw`` made whole from the pool it names (a copy), or ``raw`` itself when it names
    none; InvalidSpec when the pool is unknown or the spec asks for what its spares are not."""
    if not isinstance(raw, dict) or raw.get('pool') is None:
        return raw
    name = raw['pool']
    pool = pools.get(name) if isinstance(name, str) else None
    if pool is None:
        raise exception.InvalidSpec(reason='pool: no warm pool %r on this node (it keeps: %s)'
                                    % (str(name)[:64], ', '.join(sorted(pools)) or 'none'))
    whole = dict(raw)
    for field, value in pool.flavor:
        if field in raw and raw[field] != value:
            raise exception.InvalidSpec(
                reason='%s: pool %s boots %r, the spec asks for %r; a warm instance is its '
                       'spare\'s flavor (omit the field, or boot without the pool)'
                       % (field, name, value, str(raw[field])[:64]))
        whole[field] = value
    for field in set(FLAVOR_FIELDS) - {f for f, _ in pool.flavor}:
        if raw.get(field) is not None:
            raise exception.InvalidSpec(reason='%s: pool %s has none; a warm instance is its '
                                               'spare\'s flavor' % (field, name))
    whole['nics'] = _nics(raw.get('nics'), pool)
    if not pool.seeded:
        given = [f for f in specmod.SEED_FIELDS if raw.get(f)]
        if given:
            raise exception.InvalidSpec(
                reason='%s: pool %s\'s guests read no seed (its identity is %s): boot without '
                       'the pool' % (given[0], name, pool.identity))
    return whole


def _nics(nics, pool: Pool) -> list:
    want = [{'type': 'user'}] * pool.user_nics
    if nics is None:
        return want
    if not isinstance(nics, list):
        return nics                 # refused by the spec's own validation
    for i, nic in enumerate(nics):
        if isinstance(nic, dict) and nic.get('mac') is not None:
            raise exception.InvalidSpec(reason='nics[%d].mac: a warm instance keeps its '
                                               'spare\'s MAC; none may be given' % i)
    if [n.get('type') if isinstance(n, dict) else n for n in nics] != [n['type'] for n in want]:
        raise exception.InvalidSpec(reason='nics: pool %s has %d user NIC(s) and no other; a '
                                           'warm instance has its spare\'s NICs'
                                    % (pool.name, pool.user_nics))
    return want
