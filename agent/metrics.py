"""Prometheus metrics of the agent (prometheus_client, on its own registry).

Histograms are observed as things happen: boot time to ACTIVE, boot job duration, request
answer time, and the work queue's wait and run time per kind of call. Counters and gauges
(libvirt calls, storage commands, reports sent and skipped, jobs by state, instances by state,
claims) are read from the agent's own counters when Prometheus scrapes, so the hot path pays
nothing for them. Plain code: the HTTP endpoint's thread is green under the agent.
"""
import functools
import logging

from prometheus_client import core
from prometheus_client import exposition
from prometheus_client import metrics as pmetrics
from prometheus_client import registry as pregistry

from agent import trace

LOG = logging.getLogger(__name__)

BOOT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
READY_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1, 2.5, 5, 10)
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class NullMetrics:
    """Metrics off."""

    def on_call(self, op, enqueued, started, ended, failed) -> None:
        """A work-queue call ended (no-op)."""
        pass

    def request(self, method: str, seconds: float) -> None:
        """An RPC request was answered after ``seconds`` (no-op)."""
        pass

    def boot_active(self, seconds: float) -> None:
        """An instance became ACTIVE ``seconds`` after its request (no-op)."""
        pass

    def boot_ready(self, seconds: float) -> None:
        """An instance's guest became ready ``seconds`` after its request (no-op)."""
        pass

    def boot_finished(self, seconds: float, ok: bool) -> None:
        """A boot job ended (no-op)."""
        pass


class Metrics(NullMetrics):
    """The agent's metrics. ``sources()`` returns the agent's parts the collector reads:
    a dict with driver, commands, reporter, manager (see ``AgentCollector``)."""

    def __init__(self, sources):
        self.registry = pregistry.CollectorRegistry()
        self.boot_to_active = pmetrics.Histogram(
            'compute_agent_boot_to_active_seconds',
            'From the boot request accepted to the STARTED event applied (instance ACTIVE).',
            buckets=BOOT_BUCKETS, registry=self.registry)
        self.boot_to_ready = pmetrics.Histogram(
            'compute_agent_boot_to_ready_seconds',
            'From the boot request accepted to its guest opening the agent channel (READY).',
            buckets=READY_BUCKETS, registry=self.registry)
        self.boot_job = pmetrics.Histogram(
            'compute_agent_boot_job_seconds', 'Boot job run time (disk, define, start).',
            ['result'], buckets=BOOT_BUCKETS, registry=self.registry)
        self.requests = pmetrics.Histogram(
            'compute_agent_request_seconds',
            'Time an accepted boot_instance / delete_instance took to answer (journaled).',
            ['method'], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.queue_wait = pmetrics.Histogram(
            'compute_agent_workqueue_wait_seconds',
            'Time a blocking call waited on the global work queue for a native thread.',
            ['kind'], buckets=WAIT_BUCKETS, registry=self.registry)
        self.queue_run = pmetrics.Histogram(
            'compute_agent_workqueue_run_seconds',
            'Run time of a blocking call on a work-queue thread.',
            ['kind'], buckets=WAIT_BUCKETS, registry=self.registry)
        self.registry.register(AgentCollector(sources))
        self._server = None

    def on_call(self, op, enqueued, started, ended, failed) -> None:
        """Observe a work-queue call's queue wait and run time, by kind."""
        kind = trace.op_kind(op)
        self.queue_wait.labels(kind).observe(started - enqueued)
        self.queue_run.labels(kind).observe(ended - started)

    def request(self, method: str, seconds: float) -> None:
        """Observe an RPC request's answer time, by method."""
        self.requests.labels(method).observe(seconds)

    def boot_active(self, seconds: float) -> None:
        """Observe a boot's time from request to ACTIVE."""
        self.boot_to_active.observe(max(0.0, seconds))

    def boot_ready(self, seconds: float) -> None:
        """Observe a boot's time from request to ready."""
        self.boot_to_ready.observe(max(0.0, seconds))

    def boot_finished(self, seconds: float, ok: bool) -> None:
        """Observe a boot job's duration, by outcome."""
        self.boot_job.labels('done' if ok else 'failed').observe(seconds)

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return exposition.generate_latest(self.registry)

    def serve(self, address: str, port: int) -> int | None:
        """Serve /metrics; the port bound, or None if it could not be bound (logged: the
        agent works on without metrics rather than not at all)."""
        try:
            self._server, _thread = exposition.start_http_server(port, address,
                                                                 registry=self.registry)
        except OSError as exc:
            LOG.error('metrics endpoint %s:%d not started: %s', address, port, exc)
            return None
        bound = self._server.server_address[1]
        LOG.info('metrics on http://%s:%d/metrics', address, bound)
        return bound

    def stop(self) -> None:
        """Stop serving /metrics."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _family(kind, name: str, doc: str, label: str | None, values: dict):
    """A metric family of ``kind`` with one sample per key of ``values`` (no label: key '')."""
    family = kind(name, doc, labels=[label] if label else None)
    for key, value in sorted(values.items()):
        family.add_metric([key] if label else [], value)
    return family


_counter = functools.partial(_family, core.CounterMetricFamily)
_gauge = functools.partial(_family, core.GaugeMetricFamily)


class AgentCollector(pregistry.Collector):
    """Reads the agent's counters at scrape time."""

    def __init__(self, sources):
        self._sources = sources

    def collect(self):
        """The agent's counters, read from their owners at scrape time."""
        s = self._sources()
        driver, commands, reporter, manager = (s['driver'], s['commands'], s['reporter'],
                                               s['manager'])
        yield _counter('compute_agent_libvirt_calls', 'libvirt calls made, by operation.',
                       'op', dict(driver.host.calls))
        yield _counter('compute_agent_storage_commands', 'Storage commands run (lvs, '
                       'lvcreate, qemu-img, ...), by command.', 'command',
                       dict(commands.launches))
        yield _counter('compute_agent_reports_sent', 'Messages sent to the conductor.', None,
                       {'': reporter.reports_sent})
        yield _counter('compute_agent_report_states_sent', 'Instance states those messages '
                       'carried.', None, {'': reporter.states_sent})
        yield _counter('compute_agent_report_send_failures', 'Failed sends to the conductor '
                       '(retried).', None, {'': reporter.send_failures})
        tracker = manager.tracker.counts
        yield _counter('compute_agent_usage_reports', 'Usage reports: sent, and skipped (no-op '
                       'change, superseded before sending, equal to the last one sent).',
                       'outcome',
                       {'sent': reporter.resource_reports_sent,
                        'skipped_noop': tracker.get('reports_skipped_noop', 0),
                        'superseded': reporter.resource_reports_superseded,
                        'unchanged': reporter.resource_reports_unchanged})
        yield _counter('compute_agent_claims', 'Resource claims, by outcome.', 'outcome',
                       {'claimed': tracker.get('claims', 0),
                        'refused': tracker.get('refusals', 0),
                        'released': tracker.get('releases', 0)})
        yield _counter('compute_agent_jobs_reached', 'Jobs that reached each state.', 'state',
                       dict(manager.jobs.counts))
        jobs = dict.fromkeys(('queued', 'running', 'done', 'failed'), 0)
        jobs.update(manager.jobs.by_state())
        yield _gauge('compute_agent_jobs', 'Jobs held (the journal\'s retention), by state.',
                     'state', jobs)
        states: dict = {}
        for inst in list(manager.instances.values()):
            states[inst.vm_state] = states.get(inst.vm_state, 0) + 1
        yield _gauge('compute_agent_instances', 'Instances held, by vm_state.', 'vm_state',
                     states)
        yield _counter('compute_agent_journal_commits', 'Job journal group commits (one fsync '
                       'each).', None, {'': manager.journal.commits})
