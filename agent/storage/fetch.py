"""Downloading one image into the image cache: the command worker's ``image_fetch``.

Plain Python (urllib, hashlib) in the worker process, which never loads eventlet: the agent
only waits for the answer. The image is streamed into ``.partial-<sha256>-<pid>`` in the cache
directory while its sha256 is computed, checked against the declared size and digest, made
read-only (root's, the cache directory's group, 0440), flushed, and only then renamed to its
digest: a name in the cache is always a complete, verified image. Any failure removes the
partial file. The URL is checked again here against the worker's own policy.
"""
import hashlib
import os
import stat
import time
import urllib.error
import urllib.request

from agent import imageref

CHUNK = 1 << 20
PARTIAL = '.partial-'
MODE = 0o440


class FetchError(Exception):
    """The download failed or its bytes are not the image declared (the message says how)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise FetchError('the server redirects to another URL (HTTP %d); redirects are not '
                         'followed' % code)


def _opener():
    # No proxy from the environment either: the node talks to its sources directly.
    return urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


def _open_http(url: str, stall_timeout: float):
    try:
        resp = _opener().open(urllib.request.Request(url, headers={'Accept-Encoding':
                                                                   'identity'}),
                              timeout=stall_timeout)
    except urllib.error.HTTPError as exc:
        raise FetchError('HTTP %d %s' % (exc.code, exc.reason)) from None
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError('cannot reach %s: %s' % (url, getattr(exc, 'reason', exc))) from None
    length = resp.headers.get('Content-Length')
    return resp, int(length) if length and length.isdigit() else None


def _open_file(url: str):
    path = imageref.local_path(url)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise FetchError('%s: %s' % (path, exc.strerror)) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FetchError('%s is not a regular file' % path)
    os.set_blocking(fd, True)
    return os.fdopen(fd, 'rb'), st.st_size


def _copy(src, fd: int, ref: imageref.ImageRef, deadline: float, progress) -> str:
    digest = hashlib.sha256()
    got = 0
    while True:
        try:
            chunk = src.read(CHUNK)
        except TimeoutError:
            raise FetchError('nothing received for too long after %d of %d bytes'
                             % (got, ref.size)) from None
        except Exception as exc:     # http.client.IncompleteRead, a reset connection
            raise FetchError('the transfer broke after %d of %d bytes (%s)'
                             % (got, ref.size, type(exc).__name__)) from None
        if not chunk:
            break
        got += len(chunk)
        if got > ref.size:
            raise FetchError('more bytes than the declared size %d: refused' % ref.size)
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        progress(got)
        if time.monotonic() > deadline:
            raise FetchError('not done within the download timeout (%d of %d bytes)'
                             % (got, ref.size))
    if got < ref.size:
        raise FetchError('truncated: %d of the declared %d bytes' % (got, ref.size))
    return digest.hexdigest()


def fetch(ref: imageref.ImageRef, cache_dir: str, sources, stall_timeout: float,
          timeout: float, progress=lambda done: None) -> str:
    """Download ``ref`` into ``cache_dir``; its path. FetchError (nothing left) otherwise.

    progress(bytes so far) is called after every chunk."""
    try:
        imageref.allowed(ref.url, sources)
    except imageref.Refused as exc:
        raise FetchError(str(exc)) from None
    final = os.path.join(cache_dir, ref.sha256)
    partial = os.path.join(cache_dir, '%s%s-%d' % (PARTIAL, ref.sha256, os.getpid()))
    deadline = time.monotonic() + timeout
    if ref.url.startswith('file:'):
        src, length = _open_file(ref.url)
    else:
        src, length = _open_http(ref.url, stall_timeout)
    fd = -1
    try:
        with src:
            if length is not None and length != ref.size:
                raise FetchError('the source has %d bytes, the declared size is %d'
                                 % (length, ref.size))
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
            found = _copy(src, fd, ref, deadline, progress)
        if found != ref.sha256:
            raise FetchError('sha256 mismatch: the bytes hash to %s' % found)
        os.fchown(fd, -1, os.stat(cache_dir).st_gid)    # the owner is the worker: root
        os.fchmod(fd, MODE)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(partial, final)
        dir_fd = os.open(cache_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(partial)
        except FileNotFoundError:
            pass
        raise


class Progress:
    """Reports a download's progress at each tenth of it (deterministic: by bytes, not by
    time), through ``emit(done, total)``."""

    def __init__(self, total: int, emit):
        self._total = total
        self._emit = emit
        self._next = 1

    def __call__(self, done: int) -> None:
        tenth = done * 10 // self._total
        if tenth >= self._next:
            self._next = tenth + 1
            self._emit(done, self._total)


def run(args, policy, emit) -> dict:
    """The worker's answer to an ``image_fetch`` request (never an exception)."""
    try:
        ref = imageref.ImageRef(url=args['url'], sha256=args['sha256'], size=args['size'])
        if not imageref.SHA256_RE.fullmatch(ref.sha256) or not isinstance(ref.size, int):
            raise FetchError('refused: a malformed image reference')
        if policy.cache_dir is None:
            raise FetchError('refused: no image cache configured')
        stall = min(max(float(args.get('stall_timeout', 60)), 1.0), 3600.0)
        timeout = min(max(float(args.get('timeout', 3600)), 1.0), 86400.0)
        start = time.monotonic()
        path = fetch(ref, policy.cache_dir, policy.image_sources, stall, timeout,
                     Progress(ref.size, emit))
        return {'rc': 0, 'stdout': path, 'stderr': '',
                'seconds': round(time.monotonic() - start, 3)}
    except (FetchError, KeyError, TypeError, ValueError) as exc:
        return {'rc': 1, 'stdout': '', 'stderr': str(exc)}
    except OSError as exc:
        return {'rc': 1, 'stdout': '', 'stderr': 'writing the image: %s' % exc}
