"""Pure parsers of LVM's JSON reports (``--reportformat json --units b --nosuffix``)."""
import dataclasses
import json

from agent import exception

LV_FIELDS = 'lv_name,lv_size,lv_tags,lv_attr,vg_name'
VG_FIELDS = 'vg_name,vg_size,vg_free,vg_extent_size'


@dataclasses.dataclass(frozen=True)
class LogicalVolume:
    """One LV from ``lvs --reportformat json``: name, size in bytes, tags."""
    name: str
    vg: str
    size: int            # bytes
    tags: tuple[str, ...]
    attr: str


@dataclasses.dataclass(frozen=True)
class VolumeGroup:
    """The VG from ``vgs --reportformat json``: size and free bytes."""
    name: str
    size: int
    free: int
    extent_size: int


def _report(text: str, key: str) -> list[dict]:
    try:
        doc = json.loads(text)
        rows = []
        for part in doc['report']:
            rows.extend(part.get(key, []))
        return rows
    except (ValueError, KeyError, TypeError) as exc:
        raise exception.StorageError(reason='unparsable LVM %s report: %s' % (key, exc)) from None


def _int(row: dict, field: str) -> int:
    try:
        return int(row[field])
    except (KeyError, ValueError, TypeError):
        raise exception.StorageError(
            reason='LVM report field %s is not a byte count: %r' % (field, row.get(field))) from None


def parse_lvs(text: str) -> list[LogicalVolume]:
    """``lvs -o lv_name,lv_size,lv_tags,lv_attr,vg_name`` -> LVs."""
    return [LogicalVolume(name=r['lv_name'], vg=r.get('vg_name', ''), size=_int(r, 'lv_size'),
                          tags=tuple(t for t in r.get('lv_tags', '').split(',') if t),
                          attr=r.get('lv_attr', ''))
            for r in _report(text, 'lv')]


def parse_vgs(text: str) -> list[VolumeGroup]:
    """``vgs -o vg_name,vg_size,vg_free,vg_extent_size`` -> VGs."""
    return [VolumeGroup(name=r['vg_name'], size=_int(r, 'vg_size'), free=_int(r, 'vg_free'),
                        extent_size=_int(r, 'vg_extent_size'))
            for r in _report(text, 'vg')]


def lvm_message(stderr: str) -> str:
    """LVM's own error lines, without the warnings every command prints on this kind of node."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith('WARNING:') and 'leaked on' not in ln]
    return '; '.join(errors or lines) or 'no message'
