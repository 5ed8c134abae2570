"""The storage operations a command worker will run: named, with arguments it checks itself.

The command worker (``agent.storage.cmdworker``) is the agent's privilege boundary for
storage: it accepts only these operations, validates every argument against its own policy
(the volume group and directories it was started with) and builds the argv itself. A caller
can never make it run an arbitrary command, touch another VG, or read a file outside the image
directory. Pure code: no process is started here.
"""
import dataclasses
import os
import re

from agent import spec
from agent.storage import lvm_report

OWNER_TAG = 'compute-agent'
INSTANCE_TAG_PREFIX = 'ca-instance-'
DISK_FILE = 'disk.qcow2'
SEED_FILE = 'seed.iso'              # the NoCloud seed (agent.storage.seeds)
SEED_STAGING = 'seed.d'             # its files, written by the agent, read by genisoimage
SEED_LABEL = 'cidata'
MAX_SIZE = 1 << 50                 # 1 PiB: no instance disk is larger
_VG_RE = re.compile(r'[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,126}')
_LV_RE = re.compile(r'ca-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-root')
FORMATS = ('raw', 'qcow2')
_SHA256_RE = re.compile(r'[0-9a-f]{64}')
FETCH = 'image_fetch'       # plain Python in the worker (agent.storage.fetch), no command


class Refused(ValueError):
    """The operation or one of its arguments is not allowed."""


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a worker may touch: set when it is started, never by a request."""

    volume_group: str | None = None     # the only VG LVM operations may name
    image_dir: str | None = None        # images are read from here only
    instances_path: str | None = None   # file disks are created here only
    cache_dir: str | None = None        # downloaded images live here (by their sha256)
    image_sources: tuple = ()           # URL prefixes images are downloaded from


def lv_name(uuid: str) -> str:
    return 'ca-%s-root' % uuid


def _uuid(args: dict) -> str:
    value = args.get('uuid')
    if not spec.is_canonical_uuid(value):
        raise Refused('uuid: not a canonical lower-case uuid')
    return value


def _vg(args: dict, policy: Policy) -> str:
    vg = args.get('vg')
    if policy.volume_group is None or vg != policy.volume_group \
            or not _VG_RE.fullmatch(vg or ''):
        raise Refused('vg: only the configured volume group %r' % policy.volume_group)
    return vg


def _size(args: dict) -> int:
    size = args.get('size')
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE:
        raise Refused('size: a positive integer of bytes')
    return size


def _format(args: dict, key: str) -> str:
    fmt = args.get(key)
    if fmt not in FORMATS:
        raise Refused('%s: one of %s' % (key, ', '.join(FORMATS)))
    return fmt


def _image(args: dict, policy: Policy) -> str:
    path = args.get('image')
    if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path:
        raise Refused('image: an absolute, normal path')
    where = os.path.dirname(path)
    if policy.image_dir is not None and where == os.path.normpath(policy.image_dir):
        return path
    if policy.cache_dir is not None and where == os.path.normpath(policy.cache_dir) \
            and _SHA256_RE.fullmatch(os.path.basename(path)):
        return path
    raise Refused('image: only a file directly in the image directory %r or a cached image'
                  % policy.image_dir)


def _lvs(args: dict, policy: Policy) -> list[str]:
    return ['lvs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
            '-o', lvm_report.LV_FIELDS, _vg(args, policy)]


def _vgs(args: dict, policy: Policy) -> list[str]:
    return ['vgs', '--reportformat', 'json', '--units', 'b', '--nosuffix',
            '-o', lvm_report.VG_FIELDS, _vg(args, policy)]


def _lv_create(args: dict, policy: Policy) -> list[str]:
    vg, uuid, size = _vg(args, policy), _uuid(args), _size(args)
    return ['lvcreate', '--yes', '--name', lv_name(uuid), '--size', '%db' % size,
            '--addtag', OWNER_TAG, '--addtag', INSTANCE_TAG_PREFIX + uuid, vg]


def _lv_remove(args: dict, policy: Policy) -> list[str]:
    # Selected by the instance's tag inside the one lvremove: an LV the agent did not tag,
    # even one with the same name, is never removed.
    vg, uuid = _vg(args, policy), _uuid(args)
    return ['lvremove', '--yes', '--select', 'lv_tags=%s%s' % (INSTANCE_TAG_PREFIX, uuid), vg]


def _lv_retag(args: dict, policy: Policy) -> list[str]:
    # Hands the LV of ``owner`` (a saved spare) to instance ``uuid``: one lvchange that moves
    # the instance tag, selected by the owner's tag (never by name; the name stays).
    vg, uuid, owner = _vg(args, policy), _uuid(args), _uuid({'uuid': args.get('owner')})
    return ['lvchange', '--addtag', INSTANCE_TAG_PREFIX + uuid,
            '--deltag', INSTANCE_TAG_PREFIX + owner,
            '--select', 'lv_tags=%s%s' % (INSTANCE_TAG_PREFIX, owner), vg]


def _lv_zero(args: dict, policy: Policy) -> list[str]:
    # Zeroes an LV of the agent's (named as it names them: a spare's LV handed to an instance
    # keeps its spare's name) before it is removed: its blocks go to the next tenant.
    vg, lv = _vg(args, policy), args.get('lv')
    if not isinstance(lv, str) or not _LV_RE.fullmatch(lv):
        raise Refused('lv: only an LV named ca-<uuid>-root')
    return ['blkdiscard', '--zeroout', '/dev/%s/%s' % (vg, lv)]


def _image_to_lv(args: dict, policy: Policy) -> list[str]:
    vg, uuid = _vg(args, policy), _uuid(args)
    return ['qemu-img', 'convert', '-n', '-f', _format(args, 'format'), '-O', 'raw',
            _image(args, policy), '/dev/%s/%s' % (vg, lv_name(uuid))]


def _qcow2_create(args: dict, policy: Policy) -> list[str]:
    if policy.instances_path is None:
        raise Refused('qcow2_create: no instances directory configured')
    uuid, size = _uuid(args), _size(args)
    argv = ['qemu-img', 'create', '-q', '-f', 'qcow2']
    if args.get('image') is not None:
        argv += ['-b', _image(args, policy), '-F', _format(args, 'format')]
    return argv + [os.path.join(policy.instances_path, uuid, DISK_FILE), str(size)]


def _seed_create(args: dict, policy: Policy) -> list[str]:
    # An ISO 9660 image (Rock Ridge and Joliet names) of the instance's own staging directory,
    # labelled as cloud-init's NoCloud datasource looks for it.
    if policy.instances_path is None:
        raise Refused('seed_create: no instances directory configured')
    directory = os.path.join(policy.instances_path, _uuid(args))
    return ['genisoimage', '-quiet', '-input-charset', 'utf-8', '-volid', SEED_LABEL,
            '-joliet', '-rock', '-output', os.path.join(directory, SEED_FILE),
            os.path.join(directory, SEED_STAGING)]


OPERATIONS = {'lvs': _lvs, 'vgs': _vgs, 'lv_create': _lv_create, 'lv_remove': _lv_remove,
              'lv_retag': _lv_retag, 'lv_zero': _lv_zero,
              'image_to_lv': _image_to_lv, 'qcow2_create': _qcow2_create,
              'seed_create': _seed_create}
COMMAND = {'lvs': 'lvs', 'vgs': 'vgs', 'lv_create': 'lvcreate', 'lv_remove': 'lvremove',
           'lv_retag': 'lvchange', 'lv_zero': 'blkdiscard',
           'image_to_lv': 'qemu-img', 'qcow2_create': 'qemu-img', 'seed_create': 'genisoimage',
           FETCH: 'fetch'}


def build(op: str, args, policy: Policy) -> list[str]:
    """The argv of operation ``op``; Refused naming what is not allowed."""
    builder = OPERATIONS.get(op) if isinstance(op, str) else None
    if builder is None:
        raise Refused('unknown operation %r' % str(op)[:64])
    if not isinstance(args, dict):
        raise Refused('%s: arguments must be an object' % op)
    return builder(args, policy)
