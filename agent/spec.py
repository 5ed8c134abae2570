"""Validation of boot specs: pure functions, no I/O beyond looking at the image directory.

A spec that passes ``validate_boot_spec`` is safe to put into domain XML and paths: names are
restricted to a small character set and every file it names resolves inside the image directory.
"""
import base64
import dataclasses
import os
import re
import struct
import uuid as uuidlib

from agent import exception
from agent import imageref
from agent import images

NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,62}')
FILE_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._+-]{0,254}')
BRIDGE_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]{0,14}')
MAC_RE = re.compile(r'[0-9a-f]{2}(:[0-9a-f]{2}){5}')
# Patterns are used with fullmatch (``$`` would accept a trailing newline).
# Kernel command lines are free text for the guest; keep them printable and bounded.
CMDLINE_RE = re.compile(r'[\x20-\x7e]{0,1024}')

# What a cloud image's guest gets in its NoCloud seed (agent.nocloud): bounded, and checked
# here so that nothing malformed reaches the seed.
MAX_USER_DATA = 64 * 1024           # bytes, UTF-8
MAX_SSH_KEYS = 16
MAX_SSH_KEY_LEN = 8192
MAX_META = 16
MAX_META_VALUE = 256
HOSTNAME_LABEL_RE = re.compile(r'[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?')
META_KEY_RE = re.compile(r'[A-Za-z0-9_.-]{1,64}')
# An OpenSSH public key line: type, base64 blob, optional comment; no options (a
# "command=..." prefix would be honoured by sshd), no second line.
SSH_KEY_TYPES = ('ssh-ed25519', 'ssh-rsa', 'ecdsa-sha2-nistp256', 'ecdsa-sha2-nistp384',
                 'ecdsa-sha2-nistp521', 'sk-ssh-ed25519@openssh.com',
                 'sk-ecdsa-sha2-nistp256@openssh.com')
SSH_KEY_RE = re.compile(r'(\S+) ([A-Za-z0-9+/]+={0,3})( [\x20-\x7e]{1,255})?')
SEED_FIELDS = ('user_data', 'ssh_keys', 'hostname', 'meta')

NIC_TYPES = ('user', 'bridge')
MAX_USER_NICS = 8       # the libvirt driver pins them to PCI slots of their own


@dataclasses.dataclass(frozen=True)
class Nic:
    """A validated NIC: its type, bridge (type bridge) and MAC (None: libvirt's default range)."""
    type: str
    bridge: str | None = None
    mac: str | None = None


@dataclasses.dataclass(frozen=True)
class CheckedFile:
    """A file of the spec as checked at validation (``agent.images``): re-checked before use."""

    field: str                   # image | kernel | initrd
    path: str
    format: str
    virtual_size: int
    identity: tuple[int, int, int, int]

    def info(self) -> images.ImageInfo:
        """The identity (device, inode, size, mtime) recorded when the file was checked."""
        return images.ImageInfo(self.format, self.virtual_size, tuple(self.identity))


@dataclasses.dataclass(frozen=True)
class BootSpec:
    """A validated boot request. Paths are absolute and inside the image directory."""

    uuid: str
    name: str
    vcpus: int
    memory_mb: int
    image: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    nics: tuple[Nic, ...] = ()
    disk_gb: int = 0            # >0: a root disk of this size from the storage backend
    files: tuple[CheckedFile, ...] = ()
    pool: str | None = None     # a warm pool: restored from one of its spares if it has one
    # An image from an image store (agent.imageref): downloaded into the node's cache by the
    # boot job, which then fills in ``image`` and its checked file.
    image_ref: imageref.ImageRef | None = None
    # The guest's own data, delivered as a NoCloud seed disk (agent.nocloud):
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = ()
    hostname: str | None = None
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def seeded(self) -> bool:
        """Whether the guest gets a seed disk (the spec gave any of its fields)."""
        return bool(self.user_data or self.ssh_keys or self.hostname or self.meta)

    @property
    def image_format(self) -> str:
        """The image's format as checked (always explicit to QEMU and qemu-img)."""
        return next((f.format for f in self.files if f.field == 'image'), 'raw')

    def recheck_files(self) -> None:
        """Right before use: every file is still the one that was checked (InvalidImage)."""
        for f in self.files:
            images.recheck(f.path, f.info(), f.field)

    def to_dict(self) -> dict:
        """The spec as plain data (the journal stores it; ``from_dict`` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> 'BootSpec':
        """The inverse of ``to_dict`` (a spec validated before, e.g. read from the journal)."""
        return cls(**dict(d, nics=tuple(Nic(**n) for n in d.get('nics') or ()),
                          files=tuple(CheckedFile(**dict(f, identity=tuple(f['identity'])))
                                      for f in d.get('files') or ()),
                          ssh_keys=tuple(d.get('ssh_keys') or ()),
                          image_ref=(imageref.ImageRef(**d['image_ref'])
                                     if d.get('image_ref') else None),
                          meta=tuple(tuple(kv) for kv in d.get('meta') or ())))


@dataclasses.dataclass(frozen=True)
class Limits:
    """Bounds a spec is checked against (from configuration)."""

    image_dir: str
    max_vcpus: int = 64
    min_memory_mb: int = 16
    max_memory_mb: int = 1024 * 1024
    max_nics: int = 8
    max_disk_gb: int = 4096
    bridge_exists: object = None   # callable(name) -> bool; None skips the check
    allow_user_nics: bool = False  # [network] allow_user_nics
    bridges: frozenset = frozenset()   # [network] bridges: the only ones a spec may name
    image_sources: tuple = ()      # [images] sources: URL prefixes image_ref may name
    max_image_bytes: int = 20 * 1024 ** 3    # [images] max_image_gb


def _invalid(field: str, why: str) -> exception.InvalidSpec:
    return exception.InvalidSpec(reason='%s: %s' % (field, why))


def is_canonical_uuid(value) -> bool:
    """Whether ``value`` is a uuid string already in canonical lower-case 8-4-4-4-12 form
    (what the agent itself sends: the conductor and the storage worker accept nothing else)."""
    try:
        return isinstance(value, str) and str(uuidlib.UUID(value)) == value
    except ValueError:
        return False


def validate_uuid(value, field: str = 'uuid') -> str:
    """Return the canonical lower-case form of a uuid string, or raise InvalidSpec."""
    if not isinstance(value, str):
        raise _invalid(field, 'must be a string')
    try:
        parsed = uuidlib.UUID(value)
    except ValueError:
        raise _invalid(field, 'is not a uuid') from None
    if str(parsed) != value.lower():
        raise _invalid(field, 'must be in the canonical 8-4-4-4-12 form')
    return str(parsed)


def _int(spec: dict, field: str, lo: int, hi: int, default: int | None = None) -> int:
    value = spec.get(field, default)
    if value is None:
        raise _invalid(field, 'is required')
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, 'must be an integer')
    if not lo <= value <= hi:
        raise _invalid(field, 'must be between %d and %d, got %d' % (lo, hi, value))
    return value


def _str(spec: dict, field: str, pattern: re.Pattern, what: str) -> str | None:
    value = spec.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _invalid(field, 'must be %s' % what)
    return value


def resolve_image(image_dir: str, field: str, name) -> CheckedFile | None:
    """Check file ``name`` inside ``image_dir`` (``agent.images.check``): refuse anything that
    leaves it, is not a plain single-link file, or (an image) refers to other files."""
    if name is None:
        return None
    if not isinstance(name, str) or not FILE_RE.fullmatch(name) or name in ('.', '..'):
        raise _invalid(field, 'must be a plain file name in the image directory '
                              '(letters, digits, ".", "_", "+", "-")')
    base = os.path.realpath(image_dir)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.dirname(path) != base:
        raise _invalid(field, '%r resolves outside the image directory' % name)
    if not os.path.isfile(path):
        raise _invalid(field, 'no image %r in %s' % (name, base))
    info = images.check(base, name, field, disk=field == 'image')
    return CheckedFile(field=field, path=path, format=info.format,
                       virtual_size=info.virtual_size, identity=info.identity)


def _nics(spec: dict, limits: Limits) -> tuple[Nic, ...]:
    raw = spec.get('nics', [])
    if not isinstance(raw, list):
        raise _invalid('nics', 'must be a list')
    if len(raw) > limits.max_nics:
        raise _invalid('nics', 'at most %d allowed' % limits.max_nics)
    nics = []
    for i, item in enumerate(raw):
        field = 'nics[%d]' % i
        if not isinstance(item, dict):
            raise _invalid(field, 'must be an object')
        unknown = set(item) - {'type', 'bridge', 'mac'}
        if unknown:
            raise _invalid(field, 'unknown fields %s' % ', '.join(sorted(map(repr, unknown))))
        kind = item.get('type')
        if kind not in NIC_TYPES:
            raise _invalid(field + '.type', 'must be one of %s' % ', '.join(NIC_TYPES))
        if kind == 'user' and not limits.allow_user_nics:
            raise _invalid(field + '.type', 'user-mode NICs are disabled on this node '
                                            '([network] allow_user_nics)')
        mac = _str(item, 'mac', MAC_RE, 'a lower-case MAC address aa:bb:cc:dd:ee:ff')
        if mac is not None and int(mac[:2], 16) & 1:
            raise _invalid(field + '.mac', 'must be a unicast address')
        bridge = None
        if kind == 'bridge':
            bridge = _str(item, 'bridge', BRIDGE_RE, 'a Linux interface name (1-15 characters)')
            if bridge is None:
                raise _invalid(field + '.bridge', 'is required for a bridge NIC')
            if bridge not in limits.bridges:
                raise _invalid(field + '.bridge', '%r is not a bridge this node offers to '
                                                  'instances ([network] bridges)' % bridge)
            if limits.bridge_exists is not None and not limits.bridge_exists(bridge):
                raise _invalid(field + '.bridge', 'no Linux bridge %r on this node' % bridge)
        elif 'bridge' in item:
            raise _invalid(field + '.bridge', 'only valid for a bridge NIC')
        nics.append(Nic(type=kind, bridge=bridge, mac=mac))
    if sum(n.type == 'user' for n in nics) > MAX_USER_NICS:
        raise _invalid('nics', 'at most %d user NICs allowed' % MAX_USER_NICS)
    return tuple(nics)


def _user_data(spec: dict) -> str | None:
    value = spec.get('user_data')
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid('user_data', 'must be a string')
    if '\0' in value:
        raise _invalid('user_data', 'must not contain NUL bytes')
    size = len(value.encode('utf-8', 'surrogatepass'))
    if size > MAX_USER_DATA:
        raise _invalid('user_data', 'at most %d bytes, got %d' % (MAX_USER_DATA, size))
    try:
        value.encode('utf-8')
    except UnicodeEncodeError:
        raise _invalid('user_data', 'must be valid UTF-8') from None
    return value or None


def _ssh_key(field: str, value) -> str:
    if not isinstance(value, str) or len(value) > MAX_SSH_KEY_LEN:
        raise _invalid(field, 'must be a string of at most %d characters' % MAX_SSH_KEY_LEN)
    m = SSH_KEY_RE.fullmatch(value)
    if m is None or m.group(1) not in SSH_KEY_TYPES:
        raise _invalid(field, 'must be one OpenSSH public key line: TYPE BASE64 [COMMENT], '
                              'TYPE one of %s, no options' % ', '.join(SSH_KEY_TYPES))
    try:
        blob = base64.b64decode(m.group(2), validate=True)
    except ValueError:
        raise _invalid(field, 'the key is not valid base64') from None
    # The blob starts with its own type, length-prefixed: a key whose parts disagree is not one.
    kind = m.group(1).encode()
    if blob[:4] != struct.pack('>I', len(kind)) or blob[4:4 + len(kind)] != kind:
        raise _invalid(field, 'the key data is not a %s key' % m.group(1))
    return value


def _ssh_keys(spec: dict) -> tuple[str, ...]:
    value = spec.get('ssh_keys', [])
    if not isinstance(value, list):
        raise _invalid('ssh_keys', 'must be a list')
    if len(value) > MAX_SSH_KEYS:
        raise _invalid('ssh_keys', 'at most %d keys, got %d' % (MAX_SSH_KEYS, len(value)))
    return tuple(_ssh_key('ssh_keys[%d]' % i, key) for i, key in enumerate(value))


def _hostname(spec: dict) -> str | None:
    value = spec.get('hostname')
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 253 or \
            not all(HOSTNAME_LABEL_RE.fullmatch(label) for label in value.split('.')):
        raise _invalid('hostname', 'must be a host name (RFC 1123): dot-separated labels of '
                                   '1-63 letters, digits and inner "-", at most 253 in all')
    return value


def _meta(spec: dict) -> tuple[tuple[str, str], ...]:
    value = spec.get('meta', {})
    if not isinstance(value, dict):
        raise _invalid('meta', 'must be an object of strings')
    if len(value) > MAX_META:
        raise _invalid('meta', 'at most %d keys, got %d' % (MAX_META, len(value)))
    out = []
    for key in sorted(value, key=str):
        if not isinstance(key, str) or not META_KEY_RE.fullmatch(key):
            raise _invalid('meta', 'key %r: 1-64 letters, digits, ".", "_", "-"' % str(key)[:64])
        item = value[key]
        if not isinstance(item, str) or len(item) > MAX_META_VALUE or not item.isprintable():
            raise _invalid('meta.%s' % key, 'must be printable text of at most %d characters'
                           % MAX_META_VALUE)
        out.append((key, item))
    return tuple(out)


def _image_ref(spec: dict, limits: Limits) -> imageref.ImageRef | None:
    value = spec.get('image_ref')
    if value is None:
        return None
    if spec.get('image') is not None:
        raise _invalid('image_ref', 'not with image: one or the other')
    if spec.get('pool') is not None:
        raise _invalid('image_ref', 'not with a warm pool: its spares are of its own image')
    try:
        return imageref.parse(value, limits.image_sources, limits.max_image_bytes)
    except imageref.Refused as exc:
        raise _invalid('image_ref', str(exc)) from None


BOOT_FIELDS = frozenset({'uuid', 'name', 'vcpus', 'memory_mb', 'image', 'kernel', 'initrd',
                         'cmdline', 'nics', 'disk_gb', 'pool', 'image_ref', *SEED_FIELDS})


def validate_boot_spec(spec, limits: Limits) -> BootSpec:
    """Check a boot request and return it normalised; raise InvalidSpec naming the bad field."""
    if not isinstance(spec, dict):
        raise exception.InvalidSpec(reason='spec must be an object')
    unknown = set(spec) - BOOT_FIELDS
    if unknown:
        raise exception.InvalidSpec(
            reason='unknown fields %s' % ', '.join(sorted(repr(k)[:64] for k in unknown)))
    uuid = validate_uuid(spec.get('uuid'))
    name = _str(spec, 'name', NAME_RE, '1-63 characters of letters, digits, ".", "_", "-"')
    vcpus = _int(spec, 'vcpus', 1, limits.max_vcpus, default=1)
    memory_mb = _int(spec, 'memory_mb', limits.min_memory_mb, limits.max_memory_mb, default=128)
    cmdline = _str(spec, 'cmdline', CMDLINE_RE, 'printable ASCII, at most 1024 characters')
    files = tuple(f for f in (resolve_image(limits.image_dir, field, spec.get(field))
                              for field in ('image', 'kernel', 'initrd')) if f is not None)
    image, kernel, initrd = (next((f.path for f in files if f.field == field), None)
                             for field in ('image', 'kernel', 'initrd'))
    image_ref = _image_ref(spec, limits)
    if image is None and image_ref is None and kernel is None:
        raise exception.InvalidSpec(reason='image or kernel: one of them is required')
    if kernel is None and (initrd is not None or cmdline is not None):
        raise exception.InvalidSpec(reason='initrd and cmdline: only valid with a kernel')
    disk_gb = _int(spec, 'disk_gb', 0, limits.max_disk_gb, default=0)
    image_size = next((f.virtual_size for f in files if f.field == 'image'), 0)
    if disk_gb and image and image_size > disk_gb * 1024 ** 3:
        raise exception.InvalidSpec(
            reason='disk_gb: %d GiB is smaller than image %s (%.1f GiB)'
            % (disk_gb, os.path.basename(image), image_size / 1024 ** 3))
    pool = _str(spec, 'pool', NAME_RE, 'a warm pool\'s name')
    # With a pool: agent.warm.pools.apply refused them already unless its guests read seeds.
    seed = dict(user_data=_user_data(spec), ssh_keys=_ssh_keys(spec), hostname=_hostname(spec),
                meta=_meta(spec))
    return BootSpec(uuid=uuid, name=name or 'instance-%s' % uuid[:8], vcpus=vcpus,
                    memory_mb=memory_mb, image=image, kernel=kernel, initrd=initrd,
                    cmdline=cmdline, nics=_nics(spec, limits), disk_gb=disk_gb, files=files,
                    pool=pool, image_ref=image_ref, **seed)
