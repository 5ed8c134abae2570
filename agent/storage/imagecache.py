"""The node's image cache: images named by URL (``image_ref``), downloaded once, kept read-only
under ``[images] cache_dir`` by their sha256, evicted least recently used.

- One download per image, whoever asks: concurrent boots of a new image wait for the first
  one's download (single flight) and share its result, failure included.
- The command worker downloads (``agent.storage.fetch``): the bytes are verified (size,
  sha256) before the file gets its name, so a name in the cache is a verified image. The
  image is then checked like any other (``agent.images``: no qcow2 that names other files);
  one that fails is removed at once.
- An instance that uses a cached image pins it: ``image.pin`` in its marked directory (so it
  goes with the directory, and survives a restart). Eviction never takes a pinned image or
  one being downloaded; it runs only to make room for a download, and takes the least
  recently used first (a use sets the file's atime).
- Partial downloads a crash left (``.partial-*``) are removed at start.

Plain code: the lock and events are green under the agent; blocking file work goes to
``execute`` (the work queue), the download to the command worker.
"""
import dataclasses
import logging
import os
import threading
import time

from agent import exception
from agent import imageref
from agent import images
from agent import instancedir
from agent import durable
from agent import spec as specmod
from agent.storage import fetch
from agent.storage import operations

LOG = logging.getLogger(__name__)

PIN = 'image.pin'
DIR_MODE = 0o750
GiB = 1024 ** 3
MiB = 1024 ** 2


class _Flight:
    """One download in progress; the boots that wait for it."""

    def __init__(self):
        self.done = threading.Event()
        self.error: Exception | None = None
        self.waiting = 0            # boots waiting for it


class ImageCache:
    def __init__(self, runner, dirs: instancedir.InstanceDirs, cache_dir: str, max_bytes: int,
                 execute=None, bridge=None, max_downloads: int = 2,
                 stall_timeout: float = 60.0, timeout: float = 3600.0):
        """``execute(op, fn, *args)``: where the file work runs (the work queue).
        ``bridge(handler)``: hands the worker thread's progress to a greenthread for logging
        (``Runtime.bridge``); None logs on the calling thread."""
        self._run = runner
        self._dirs = dirs
        self.cache_dir = cache_dir
        self.max_bytes = max_bytes
        self._execute = execute or (lambda op, fn, *args: fn(*args))
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._reserved = 0                  # bytes of the downloads in progress
        self._slots = threading.BoundedSemaphore(max_downloads)
        self._fetch_args = {'stall_timeout': stall_timeout, 'timeout': timeout}
        self._progress = bridge(self._log_progress) if bridge is not None else None
        self.counts = {'downloads': 0, 'hits': 0, 'shared': 0, 'evicted': 0, 'failed': 0}

    # -- start-up ---------------------------------------------------------------------------
    def init(self) -> dict:
        """Make the cache directory (root's, QEMU's group, 0750) and remove what interrupted
        downloads left; what the cache holds."""
        return self._execute('images.init', self._init)

    def _init(self) -> dict:
        os.makedirs(self.cache_dir, mode=DIR_MODE, exist_ok=True)
        if self._dirs.gid is not None:
            os.chown(self.cache_dir, 0, self._dirs.gid)
        os.chmod(self.cache_dir, DIR_MODE)
        for name in os.listdir(self.cache_dir):
            if name.startswith(fetch.PARTIAL):
                LOG.warning('removing %s, left by an interrupted download', name)
                os.unlink(os.path.join(self.cache_dir, name))
        entries = self._entries()
        return {'images': len(entries), 'bytes': sum(size for size, _ in entries.values())}

    # -- boots ------------------------------------------------------------------------------
    def path(self, sha256: str) -> str:
        return os.path.join(self.cache_dir, sha256)

    def resolve(self, spec: specmod.BootSpec) -> specmod.BootSpec:
        """``spec`` with its ``image_ref`` made a checked local image: downloaded if the node
        does not have it yet (or waiting for the download in progress), pinned for the
        instance. InvalidImage/InvalidSpec/StorageError otherwise, with nothing pinned."""
        ref = spec.image_ref
        path = self._acquire(ref, spec.uuid)
        try:
            info = images.check(self.cache_dir, ref.sha256, 'image_ref')
            if spec.disk_gb and info.virtual_size > spec.disk_gb * GiB:
                raise exception.InvalidSpec(
                    reason='disk_gb: %d GiB is smaller than the image (%.1f GiB)'
                    % (spec.disk_gb, info.virtual_size / GiB))
        except Exception:
            self.unpin(spec.uuid)
            raise
        checked = specmod.CheckedFile(field='image', path=path, format=info.format,
                                      virtual_size=info.virtual_size, identity=info.identity)
        return dataclasses.replace(spec, image=path, files=spec.files + (checked,))

    def _acquire(self, ref: imageref.ImageRef, uuid: str) -> str:
        waited = False
        while True:
            with self._lock:
                if self._use(ref, uuid):
                    self.counts['shared' if waited else 'hits'] += 1
                    return self.path(ref.sha256)
                flight = self._flights.get(ref.sha256)
                leader = flight is None
                if leader:
                    flight = self._flights[ref.sha256] = _Flight()
            if leader:
                return self._lead(flight, ref, uuid)
            LOG.info('[instance: %s] image %s is being downloaded: waiting for it', uuid,
                     ref.sha256[:12])
            flight.waiting += 1
            try:
                flight.done.wait()
            finally:
                flight.waiting -= 1
            if flight.error is not None:
                raise flight.error
            waited = True
            # the image is there now: use it (or, evicted meanwhile, download it again)

    def _lead(self, flight: _Flight, ref: imageref.ImageRef, uuid: str) -> str:
        try:
            with self._slots:
                with self._lock:
                    self._execute('images.room', self._make_room, ref.size, uuid)
                    self._reserved += ref.size
                try:
                    self._download(ref, uuid)
                finally:
                    with self._lock:
                        self._reserved -= ref.size
            with self._lock:
                if not self._use(ref, uuid):
                    raise exception.StorageError(reason='image %s vanished from the cache '
                                                        'right after its download' % ref.sha256)
                del self._flights[ref.sha256]
        except Exception as exc:
            self.counts['failed'] += 1
            flight.error = exc
            with self._lock:
                self._flights.pop(ref.sha256, None)
            raise
        finally:
            flight.done.set()
        return self.path(ref.sha256)

    def _download(self, ref: imageref.ImageRef, uuid: str) -> None:
        LOG.info('[instance: %s] downloading image %s (%.1f MiB) from %s', uuid,
                 ref.sha256[:12], ref.size / MiB, ref.url)
        start = time.monotonic()
        bridge = self._progress
        progress = None if bridge is None else (
            lambda line: bridge.put((uuid, ref.sha256, line)))
        result = self._run.run(operations.FETCH, dict(self._fetch_args, url=ref.url,
                                                      sha256=ref.sha256, size=ref.size),
                               instance=uuid, progress=progress)
        if result.rc:
            raise exception.InvalidImage(field='image_ref', reason='download of %s failed: %s'
                                         % (ref.url, result.stderr.strip() or 'no message'))
        self.counts['downloads'] += 1
        try:
            images.check(self.cache_dir, ref.sha256, 'image_ref')
        except exception.InvalidImage:
            self._execute('images.discard', os.unlink, self.path(ref.sha256))
            raise
        seconds = time.monotonic() - start
        LOG.info('[instance: %s] image %s downloaded and verified: %.1f MiB in %.1f s '
                 '(%.1f MiB/s)', uuid, ref.sha256[:12], ref.size / MiB, seconds,
                 ref.size / MiB / max(seconds, 1e-3))

    def _log_progress(self, item) -> None:
        uuid, sha256, line = item
        LOG.info('[instance: %s] downloading image %s: %d%% (%.1f of %.1f MiB)', uuid,
                 sha256[:12], line['progress'] * 100 // max(line['total'], 1),
                 line['progress'] / MiB, line['total'] / MiB)

    def _use(self, ref: imageref.ImageRef, uuid: str) -> bool:
        """If the image is cached: pin it for ``uuid``, mark it used now; whether it was."""
        if not self._execute('images.stat', self._cached, ref):
            return False
        self._dirs.create(uuid)
        self._execute('images.pin', self._pin, ref, uuid)
        return True

    def unpin(self, uuid: str) -> None:
        """The instance no longer needs its image (removed with its directory otherwise)."""
        if self._execute('images.unpin', self._unpin, uuid):
            self._dirs.remove_if_empty(uuid)

    # -- the files (on the work queue) ------------------------------------------------------
    def _cached(self, ref: imageref.ImageRef) -> bool:
        try:
            st = os.stat(self.path(ref.sha256))
        except FileNotFoundError:
            return False
        if st.st_size != ref.size:
            raise exception.InvalidImage(
                field='image_ref', reason='the cached image %s has %d bytes, the declared '
                                          'size is %d' % (ref.sha256[:12], st.st_size, ref.size))
        return True

    def _pin(self, ref: imageref.ImageRef, uuid: str) -> None:
        durable.write_file(os.path.join(self._dirs.path(uuid), PIN), ref.sha256 + '\n',
                           mode=0o600)
        path = self.path(ref.sha256)
        os.utime(path, ns=(time.time_ns(), os.stat(path).st_mtime_ns))   # atime: last use

    def _unpin(self, uuid: str) -> bool:
        try:
            os.unlink(os.path.join(self._dirs.path(uuid), PIN))
            return True
        except FileNotFoundError:
            return False

    def _entries(self) -> dict[str, tuple[int, int]]:
        """sha256 -> (bytes, last use in ns) of every complete image."""
        out = {}
        for name in os.listdir(self.cache_dir):
            if imageref.SHA256_RE.fullmatch(name):
                try:
                    st = os.stat(os.path.join(self.cache_dir, name))
                except FileNotFoundError:
                    continue
                out[name] = (st.st_size, st.st_atime_ns)
        return out

    def _pinned(self) -> set[str]:
        pinned = set()
        for path in self._dirs.owned().values():
            try:
                with open(os.path.join(path, PIN)) as f:
                    pinned.add(f.read().strip())
            except (FileNotFoundError, UnicodeDecodeError):
                pass
        return pinned

    def _make_room(self, size: int, uuid: str) -> None:
        """Evict unused images, least recently used first, until ``size`` more bytes fit in
        ``max_bytes`` and on the filesystem; StorageError if they cannot."""
        entries = self._entries()
        keep = self._pinned() | set(self._flights)
        used = sum(b for b, _ in entries.values()) + self._reserved
        for sha, (nbytes, last) in sorted(entries.items(), key=lambda e: e[1][1]):
            if used + size <= self.max_bytes:
                break
            if sha in keep:
                continue
            os.unlink(self.path(sha))
            used -= nbytes
            self.counts['evicted'] += 1
            LOG.info('[instance: %s] evicted image %s (%.1f MiB, unused since %s) to make room',
                     uuid, sha[:12], nbytes / MiB,
                     time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(last / 1e9)))
        if used + size > self.max_bytes:
            raise exception.StorageError(
                reason='image cache full: %.1f MiB more do not fit in %.1f MiB ([images] '
                       'cache_max_gb); %.1f MiB are held by images in use or being downloaded'
                       % (size / MiB, self.max_bytes / MiB, used / MiB))
        fs = os.statvfs(self.cache_dir)
        if fs.f_bavail * fs.f_frsize < size:
            raise exception.StorageError(
                reason='no room for the image on %s: %.1f MiB free, %.1f MiB needed'
                % (self.cache_dir, fs.f_bavail * fs.f_frsize / MiB, size / MiB))

    def stats(self) -> dict:
        with self._lock:
            return dict(self.counts, downloading=len(self._flights),
                        waiting=sum(f.waiting for f in self._flights.values()))
