"""Images named by URL (a spec's ``image_ref``): what a reference is, and which URLs a node
may fetch. Pure: the spec's validation and the command worker that downloads both use it.

A URL is allowed only below one of the node's sources (``[images] sources``): the same
scheme, host and port, and a path under the source's path, compared after parsing (never as
strings: ``http://trusted@evil/`` starts with ``http://trusted``). No user info, no fragment,
no ``.``/``..`` segment, no encoded slash.
"""
import dataclasses
import re
import urllib.parse

SCHEMES = ('http', 'https', 'file')
MAX_URL = 2048
SHA256_RE = re.compile(r'[0-9a-f]{64}')
URL_RE = re.compile(r'[\x21-\x7e]{1,%d}' % MAX_URL)     # printable ASCII, no space


class Refused(ValueError):
    """A reference or URL that may not be used (the message says why)."""


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """An image in an image store: where it is, and what it must be."""

    url: str
    sha256: str
    size: int           # bytes, exactly


def _parts(url: str) -> urllib.parse.SplitResult:
    if not isinstance(url, str) or not URL_RE.fullmatch(url):
        raise Refused('url: printable ASCII without spaces, at most %d characters' % MAX_URL)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise Refused('url: the scheme must be one of %s' % ', '.join(SCHEMES))
    if '@' in parts.netloc:
        raise Refused('url: no user name or password in it')
    if parts.fragment or url.endswith('#'):
        raise Refused('url: no fragment')
    if parts.scheme == 'file' and (parts.netloc not in ('', 'localhost') or parts.query):
        raise Refused('url: a file URL names a local path only')
    if '%2f' in parts.path.lower() or '%00' in parts.path:
        raise Refused('url: no encoded "/" or NUL in the path')
    segments = urllib.parse.unquote(parts.path).split('/')
    if any(s in ('.', '..') for s in segments):
        raise Refused('url: no "." or ".." in the path')
    if not parts.path.startswith('/') or parts.path.endswith('/'):
        raise Refused('url: must name a file')
    return parts


def _source_parts(source: str) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(source)
    if parts.scheme not in SCHEMES or not parts.path.endswith('/') or parts.query \
            or parts.fragment or '@' in parts.netloc:
        raise Refused('[images] sources: %r must be a URL prefix ending in "/"' % source)
    return parts


def allowed(url: str, sources) -> urllib.parse.SplitResult:
    """The parsed URL if it lies below one of ``sources``; Refused otherwise."""
    parts = _parts(url)
    if not sources:
        raise Refused('this node downloads no images ([images] sources is empty)')
    for source in sources:
        src = _source_parts(source)
        if (src.scheme == parts.scheme and src.netloc.lower() == parts.netloc.lower()
                and urllib.parse.unquote(parts.path).startswith(
                    urllib.parse.unquote(src.path))):
            return parts
    raise Refused('url: not below any of this node\'s image sources ([images] sources)')


def local_path(url: str) -> str:
    """The path a (checked) file URL names."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


def parse(value, sources, max_size: int) -> ImageRef:
    """A spec's ``image_ref`` object, checked: {"url", "sha256", "size"}. Refused naming the
    bad field (without the "image_ref." prefix)."""
    if not isinstance(value, dict):
        raise Refused('must be an object {"url", "sha256", "size"}')
    unknown = set(value) - {'url', 'sha256', 'size'}
    if unknown:
        raise Refused('unknown fields %s' % ', '.join(sorted(repr(k)[:64] for k in unknown)))
    sha = value.get('sha256')
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha):
        raise Refused('sha256: 64 lower-case hex digits')
    size = value.get('size')
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise Refused('size: a positive integer of bytes')
    if size > max_size:
        raise Refused('size: %d bytes is more than this node takes (%d, [images] '
                      'max_image_gb)' % (size, max_size))
    url = value.get('url')
    allowed(url, sources)
    return ImageRef(url=url, sha256=sha, size=size)
