"""Jobs: every boot and delete is one, with an id, a state and, when failed, the reason.

Kept in memory; finished jobs are pruned after ``retention`` seconds.
"""
import collections
import dataclasses
import threading
import time
import uuid as uuidlib

from agent import exception

QUEUED = 'queued'
RUNNING = 'running'
DONE = 'done'
FAILED = 'failed'
FINISHED = (DONE, FAILED)


@dataclasses.dataclass
class Job:
    id: str
    kind: str                  # boot | delete
    uuid: str                  # the instance
    state: str = QUEUED
    reason: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def to_dict(self) -> dict:
        return {'job_id': self.id, 'kind': self.kind, 'uuid': self.uuid, 'state': self.state,
                'reason': self.reason, 'created_at': self.created_at,
                'started_at': self.started_at, 'finished_at': self.finished_at,
                'libvirt_calls': sum(self.calls.values()),
                'libvirt_calls_by_op': dict(self.calls)}


class JobTable:
    """Thread-safe registry of jobs."""

    def __init__(self, retention: float = 3600.0):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._retention = retention
        self.counts = collections.Counter()   # jobs that reached each state

    def create(self, kind: str, uuid: str) -> Job:
        job = Job(id=str(uuidlib.uuid4()), kind=kind, uuid=uuid)
        with self._lock:
            self._prune_locked(time.time())
            self._jobs[job.id] = job
            self.counts[QUEUED] += 1
        return job

    def discard(self, job: Job) -> None:
        """Forget a job whose request was refused after it was recorded."""
        with self._lock:
            self._jobs.pop(job.id, None)
            self.counts[QUEUED] -= 1

    def start(self, job: Job) -> None:
        job.state, job.started_at = RUNNING, time.time()
        self.counts[RUNNING] += 1

    def finish(self, job: Job, reason: str | None = None) -> None:
        job.state = FAILED if reason else DONE
        job.reason = reason
        job.finished_at = time.time()
        self.counts[job.state] += 1

    def get(self, job_id) -> Job:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise exception.JobNotFound(job_id=str(job_id)[:64])
        return job

    def by_state(self) -> dict:
        return dict(collections.Counter(j.state for j in list(self._jobs.values())))

    def _prune_locked(self, now: float) -> None:
        cutoff = now - self._retention
        for job_id in [j.id for j in self._jobs.values()
                       if j.state in FINISHED and j.finished_at < cutoff]:
            del self._jobs[job_id]
