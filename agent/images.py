"""Facts about image files read from their headers, and the checks that make an image safe to
hand to QEMU. No command runs for them.

Images are opened relative to the image directory without following symlinks, must be
regular files with a single link (a hard link could name any file of the host), and a qcow2
must not refer to any other file: no backing file, no external data file, no encryption.
Everything else is handed to QEMU as ``raw``, with the format always explicit, so QEMU never
probes a format and never opens a file the agent did not check. ``check`` records what was
checked (device, inode, size, mtime); ``recheck`` right before use refuses a file that changed
meanwhile.
"""
import dataclasses
import os
import stat
import struct

from agent import exception

QCOW2_MAGIC = b'QFI\xfb'
_HEADER_READ = 64 * 1024            # qcow2 header and its extensions live in the first cluster
_EXT_BACKING_FORMAT = 0xe2792aca
_EXT_DATA_FILE = 0x44415441
_INCOMPAT_DATA_FILE = 1 << 2


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """What ``check`` found: the format to give QEMU, the size the guest sees, and the
    identity of the file checked."""

    format: str                      # raw | qcow2
    virtual_size: int
    identity: tuple[int, int, int, int]   # st_dev, st_ino, st_size, st_mtime_ns


def parse_qcow2_header(data: bytes) -> dict:
    """The fields of a qcow2 header that matter for safety (pure; ``data`` starts at byte 0).
    Raises ValueError for a header that is not a well-formed qcow2 v2/v3 header."""
    if len(data) < 72 or data[:4] != QCOW2_MAGIC:
        raise ValueError('not a qcow2 header')
    version, backing_off, backing_len, cluster_bits, size, crypt = struct.unpack(
        '>IQIIQI', data[4:36])
    if version not in (2, 3):
        raise ValueError('qcow2 version %d' % version)
    incompatible, header_len = 0, 72
    if version == 3:
        if len(data) < 104:
            raise ValueError('truncated qcow2 v3 header')
        incompatible = struct.unpack('>Q', data[72:80])[0]
        header_len = struct.unpack('>I', data[100:104])[0]
    extensions = []
    off = header_len
    while off + 8 <= len(data):
        kind, length = struct.unpack('>II', data[off:off + 8])
        if kind == 0:
            break
        extensions.append(kind)
        off += 8 + (length + 7) // 8 * 8
    return {'version': version, 'backing_file_offset': backing_off,
            'backing_file_size': backing_len, 'cluster_bits': cluster_bits, 'size': size,
            'crypt_method': crypt, 'incompatible_features': incompatible,
            'extensions': extensions}


def qcow2_refusal(header: dict) -> str | None:
    """Why a qcow2 with this header may not be used, or None."""
    if header['backing_file_offset'] or header['backing_file_size']:
        return 'a qcow2 image with a backing file is refused (it would make QEMU open another file)'
    if header['incompatible_features'] & _INCOMPAT_DATA_FILE or \
            _EXT_DATA_FILE in header['extensions']:
        return 'a qcow2 image with an external data file is refused'
    if _EXT_BACKING_FORMAT in header['extensions']:
        return 'a qcow2 image naming a backing format is refused'
    if header['crypt_method']:
        return 'an encrypted qcow2 image is refused'
    return None


def _open(image_dir: str, name: str, field: str) -> int:
    try:
        dir_fd = os.open(image_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise exception.InvalidImage(field=field, reason='image directory %s: %s'
                                     % (image_dir, exc.strerror)) from None
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                       dir_fd=dir_fd)
    except OSError as exc:
        raise exception.InvalidImage(field=field, reason='%r: %s' % (name, exc.strerror)) from None
    finally:
        os.close(dir_fd)


def _inspect_fd(fd: int, name: str, field: str, header_check: bool) -> ImageInfo:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise exception.InvalidImage(field=field, reason='%r is not a regular file' % name)
    if st.st_nlink != 1:
        raise exception.InvalidImage(
            field=field, reason='%r has %d links; an image must have exactly one (a hard link '
                                'could name any file of the host)' % (name, st.st_nlink))
    fmt, size = 'raw', st.st_size
    data = os.pread(fd, _HEADER_READ, 0) if header_check else b''   # kernels: bytes only
    if data[:4] == QCOW2_MAGIC:
        try:
            header = parse_qcow2_header(data)
        except ValueError as exc:
            raise exception.InvalidImage(field=field, reason='%r: %s' % (name, exc)) from None
        why = qcow2_refusal(header)
        if why:
            raise exception.InvalidImage(field=field, reason='%r: %s' % (name, why))
        fmt, size = 'qcow2', header['size']
    return ImageInfo(format=fmt, virtual_size=size,
                     identity=(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))


def check(image_dir: str, name: str, field: str, disk: bool = True) -> ImageInfo:
    """Open ``name`` inside ``image_dir`` once (no symlink followed) and check it.

    ``disk``: the file becomes a guest disk, so its format matters (a kernel or initrd is
    read by QEMU as plain bytes)."""
    fd = _open(image_dir, name, field)
    try:
        return _inspect_fd(fd, name, field, disk)
    finally:
        os.close(fd)


def recheck(path: str, info: ImageInfo, field: str) -> None:
    """Right before use: the file at ``path`` is still the one checked, unchanged."""
    found = check(os.path.dirname(path), os.path.basename(path), field, disk=field == 'image')
    if found != info:
        raise exception.InvalidImage(
            field=field, reason='%s changed after it was checked; boot refused'
            % os.path.basename(path))


def virtual_size(path: str) -> int:
    """Bytes the image expands to: the qcow2 header's size field, or a raw file's length."""
    with open(path, 'rb') as f:
        header = f.read(32)
    if header[:4] == QCOW2_MAGIC and len(header) >= 32:
        return struct.unpack('>Q', header[24:32])[0]
    return os.path.getsize(path)
