"""Facts about image files read from their headers: no command runs for them."""
import os
import struct

QCOW2_MAGIC = b'QFI\xfb'


def image_format(path: str) -> str:
    with open(path, 'rb') as f:
        return 'qcow2' if f.read(4) == QCOW2_MAGIC else 'raw'


def virtual_size(path: str) -> int:
    """Bytes the image expands to: the qcow2 header's size field, or a raw file's length."""
    with open(path, 'rb') as f:
        header = f.read(32)
    if header[:4] == QCOW2_MAGIC and len(header) >= 32:
        return struct.unpack('>Q', header[24:32])[0]
    return os.path.getsize(path)
