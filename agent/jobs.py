"""Jobs: every boot, delete, stop, start and reboot is one, with an id, a state and, when failed, the reason.

States: queued -> running -> done | failed (with the reason). The table is the in-memory
mirror of the durable journal (``agent.journal``): every change is put there, the table is
loaded from it at start-up, and finished jobs are pruned from both after ``retention``
seconds.
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
    """One job: what it does (``kind``) to which instance, its state, reason, result and
    libvirt calls."""
    id: str
    kind: str                  # boot | delete | stop | start | reboot
    uuid: str                  # the instance
    state: str = QUEUED
    reason: str | None = None
    created_at: float = dataclasses.field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 1          # runs, counting resumptions after restarts
    spec: dict | None = None   # a boot's validated spec, a power job's arguments: what a
    #                            resumed job runs again
    result: str | None = None  # how a done job got there (e.g. 'graceful', 'forced')
    calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def to_dict(self) -> dict:
        """The job as ``get_job`` answers it."""
        return {'job_id': self.id, 'kind': self.kind, 'uuid': self.uuid, 'state': self.state,
                'reason': self.reason, 'created_at': self.created_at,
                'started_at': self.started_at, 'finished_at': self.finished_at,
                'attempts': self.attempts, 'result': self.result,
                'libvirt_calls': sum(self.calls.values()),
                'libvirt_calls_by_op': dict(self.calls)}

    def row(self) -> dict:
        """The job as the journal stores it."""
        return {'id': self.id, 'kind': self.kind, 'uuid': self.uuid, 'state': self.state,
                'reason': self.reason, 'created_at': self.created_at,
                'started_at': self.started_at, 'finished_at': self.finished_at,
                'attempts': self.attempts, 'calls': dict(self.calls), 'spec': self.spec,
                'result': self.result}

    @classmethod
    def from_row(cls, row: dict) -> 'Job':
        """A job from its journal row (the inverse of ``row``)."""
        return cls(id=row['id'], kind=row['kind'], uuid=row['uuid'], state=row['state'],
                   reason=row['reason'], created_at=row['created_at'],
                   started_at=row['started_at'], finished_at=row['finished_at'],
                   attempts=row['attempts'] or 1, spec=row['spec'], result=row.get('result'),
                   calls=collections.Counter(row['calls'] or {}))


class JobTable:
    """Thread-safe registry of jobs, written through to ``journal``."""

    def __init__(self, journal, retention: float = 3600.0):
        self._journal = journal
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._retention = retention
        self._pruned_at = time.time()
        self.counts = collections.Counter()   # jobs that reached each state

    def restore(self, rows: list[dict]) -> list[Job]:
        """Load the journal's jobs at start-up; returns them, oldest first."""
        jobs = [Job.from_row(r) for r in rows]
        with self._lock:
            for job in jobs:
                self._jobs[job.id] = job
        return jobs

    def create(self, kind: str, uuid: str, spec: dict | None = None) -> tuple[Job, int]:
        """A new queued job; returns it and the journal ticket of its record."""
        job = Job(id=str(uuidlib.uuid4()), kind=kind, uuid=uuid, spec=spec)
        with self._lock:
            self._jobs[job.id] = job
            self.counts[QUEUED] += 1
        self._maybe_prune()
        return job, self._journal.put(job.row())

    def forget(self, job: Job) -> None:
        """A job whose record never reached the journal (withdrawn): it never existed."""
        with self._lock:
            self._jobs.pop(job.id, None)
            self.counts[QUEUED] -= 1

    def start(self, job: Job) -> None:
        """Mark ``job`` running (journaled)."""
        job.state, job.started_at = RUNNING, time.time()
        self.counts[RUNNING] += 1
        self._journal.put(job.row())

    def requeue(self, job: Job) -> None:
        """An interrupted job that will run again (after a restart)."""
        job.state, job.attempts = QUEUED, job.attempts + 1
        self._journal.put(job.row())

    def finish(self, job: Job, reason: str | None = None, result: str | None = None) -> None:
        """End ``job``: failed with ``reason``, or done (``result``: how, when it matters)."""
        job.state = FAILED if reason else DONE
        job.reason = reason
        job.result = result
        job.finished_at = time.time()
        self.counts[job.state] += 1
        self._journal.put(job.row())

    def get(self, job_id) -> Job:
        """The job with this id; JobNotFound."""
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            raise exception.JobNotFound(job_id=str(job_id)[:64])
        return job

    def all(self) -> list[Job]:
        """Every job held, in no order."""
        return list(self._jobs.values())

    def by_state(self) -> dict:
        """How many jobs are in each state."""
        return dict(collections.Counter(j.state for j in list(self._jobs.values())))

    def _maybe_prune(self) -> None:
        """At most once a minute: drop jobs finished longer than ``retention`` ago."""
        now = time.time()
        if now - self._pruned_at < min(60.0, self._retention):
            return
        self._pruned_at = now
        self.prune(now)

    def prune(self, now: float) -> int:
        """Drop jobs finished before ``now - retention`` (here and in the journal); how many."""
        cutoff = now - self._retention
        with self._lock:
            old = [j.id for j in self._jobs.values()
                   if j.state in FINISHED and j.finished_at < cutoff]
            for job_id in old:
                del self._jobs[job_id]
        self._journal.prune(cutoff)
        return len(old)
