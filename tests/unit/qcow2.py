"""Builds qcow2 headers the way qemu-img writes them (v2 and v3), for the image checks."""
import struct

_END = struct.pack('>II', 0, 0)


def header(size: int = 1 << 20, version: int = 3, backing: bytes = b'',
           backing_format: bytes = b'', data_file: bytes = b'', crypt: int = 0) -> bytes:
    """A qcow2 header (and its extensions) with the given references to other files."""
    header_len = 104 if version == 3 else 72
    ext = b''
    for kind, value in ((0xe2792aca, backing_format), (0x44415441, data_file)):
        if value:
            ext += struct.pack('>II', kind, len(value)) + value + b'\0' * (-len(value) % 8)
    ext += _END
    backing_off = header_len + len(ext) if backing else 0
    incompatible = (1 << 2) if data_file else 0
    head = struct.pack('>4sIQIIQI', b'QFI\xfb', version, backing_off, len(backing), 16, size,
                       crypt)
    head += struct.pack('>IQQIIQ', 0, 0, 0, 0, 0, 0)          # l1, refcount, snapshots
    if version == 3:
        head += struct.pack('>QQQII', incompatible, 0, 0, 4, header_len)
    return head + ext + backing + b'\0' * 512
