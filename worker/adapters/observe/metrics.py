"""Prometheus metrics: what the tasks count, and the state Redis holds, read at scrape time.

Two kinds of number, measured in two ways:

- **Counts and the i'mport latency histogram** happen in the process that runs
  the task: with the prefork pool that is a child process, which Celery
  recycles and replaces, and which nobody can scrape. So prometheus-client
  runs in its multiprocess mode: every process of a worker writes its values
  to a memory-mapped file in a directory private to that worker (made at start,
  named by ``PROMETHEUS_MULTIPROC_DIR``), and the worker's main process, which
  serves ``/metrics``, adds up the files of all its children, living and dead,
  at each scrape. A child that exits keeps its counts; the thread pool, one
  process, takes the same path. Counting costs a write to memory: no network
  round trip on the hot path, where the alternative (counters in Redis, one
  exporter for the fleet) would add one to every i'mport call.
- **State** (the queue's depth, ledger jobs by state, the oldest due job,
  dead messages, the ingress backlog) is nobody's count: it is read from the
  broker and Redis when Prometheus scrapes (:class:`StateCollector`), so it is
  right whichever worker did what, and across restarts. Every worker reports
  the same fleet-wide values: aggregate them with ``max``, never ``sum``.

Labels never carry an imp_uid, a task id or anything from a payload: they
would be personal data or unbounded series. Every count about jobs carries the
job's ``provider`` and ``kind`` (:data:`JOB_LABELS`, from its
:class:`~worker.core.types.JobKey`): a bounded pair, ``unknown`` for a run whose
payload named no job. The i'mport latency histogram is per HTTP request, not per job
(a token request is no job's), and has neither.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.adapters.store.keys import DEAD_ENTRIES_KEY, DEAD_MESSAGES_KEY
from worker.adapters.store.views import (
    dead_entry_count,
    dead_message_count,
    ingress_backlog,
    jobs_by_state,
    oldest_due_seconds,
)
from worker.core.outcome import Outcome
from worker.core.types import JobKey

log = logging.getLogger(__name__)

#: i'mport usually answers in tens of milliseconds; IAMPORT_TIMEOUT (10 s by
#: default) bounds the slowest.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: The most due-index entries one scrape reads to split them by state; beyond
#: it (a backlog of this size is an outage in itself) the rest count as "unknown".

#: The labels every count about jobs starts with: which provider, which kind of job.
JOB_LABELS = ("provider", "kind")
#: Their value for a run whose payload named no job it could read.
UNKNOWN_JOB = "unknown"


def job_labels(job: JobKey | None) -> tuple[str, str]:
    """A job's :data:`JOB_LABELS` values: ``("iamport", "external")``; ``unknown`` for none."""
    return (job.provider, job.kind) if job is not None else (UNKNOWN_JOB, UNKNOWN_JOB)


class Metrics:
    """The counters and the histogram a worker process updates.

    Built once per process (with the runtime, after a prefork child forked),
    never at import: in multiprocess mode a value is bound to a file when its
    metric is made.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # registry=None: not registered anywhere. In multiprocess mode the files
        # are what is served, through MultiProcessCollector.
        self.issued = Counter(
            "cashreceipt_receipts_issued",
            "Receipts issued by i'mport for a job (re-issues after a partial refund included)",
            JOB_LABELS,
            registry=registry,
        )
        self.failed = Counter(
            "cashreceipt_receipts_failed",
            "Issue jobs that ended in a failure event, by reason",
            [*JOB_LABELS, "reason"],
            registry=registry,
        )
        self.cancelled = Counter(
            "cashreceipt_receipts_cancelled",
            "Receipts cancelled after a refund",
            JOB_LABELS,
            registry=registry,
        )
        self.cancel_failed = Counter(
            "cashreceipt_cancellations_failed",
            "Cancellations that ended in a cancel_failed event, by reason",
            [*JOB_LABELS, "reason"],
            registry=registry,
        )
        self.retries = Counter(
            "cashreceipt_retries",
            "Attempts handed back to retry later: as a Celery countdown or parked in the ledger",
            [*JOB_LABELS, "task", "cause", "how"],
            registry=registry,
        )
        self.duplicates = Counter(
            "cashreceipt_duplicates_absorbed",
            "Task messages that found their job already done and ended without calling i'mport",
            [*JOB_LABELS, "task"],
            registry=registry,
        )
        self.errors = Counter(
            "cashreceipt_task_errors",
            "Task runs that raised something unexpected (a bug, or Redis gone mid-task)",
            [*JOB_LABELS, "task"],
            registry=registry,
        )
        self.resent = Counter(
            "cashreceipt_sweeper_resent_jobs",
            "Jobs the sweeper re-sent from the ledger (lost messages, parked jobs, dead workers)",
            JOB_LABELS,
            registry=registry,
        )
        self.late = Counter(
            "cashreceipt_late_processing_detected",
            "Receipts that appeared after a lookup made past the provider's bound on late "
            "processing (IAMPORT_SETTLE_SECONDS) found none: the limit of the exactly-once "
            "guarantee was crossed, by provider and kind of job",
            JOB_LABELS,
            registry=registry,
        )
        self.iamport_seconds = Histogram(
            "cashreceipt_iamport_request_duration_seconds",
            "Time of each HTTP request to i'mport, by method, endpoint and HTTP status "
            "('none' when no answer came)",
            ["method", "endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.portone_seconds = Histogram(
            "cashreceipt_portone_request_duration_seconds",
            "Time of each HTTP request to PortOne V2, by method, endpoint and HTTP status "
            "('none' when no answer came)",
            ["method", "endpoint", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe_portone(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """One request to PortOne V2 (the shape of
        :class:`worker.adapters.transport.RequestObserver`)."""
        self.portone_seconds.labels(method, endpoint, status).observe(seconds)

    def observe_iamport(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        """One request to i'mport.

        The shape of :class:`worker.adapters.transport.RequestObserver`.
        """
        self.iamport_seconds.labels(method, endpoint, status).observe(seconds)

    def late_processing(self, job: JobKey | None) -> None:
        """A provider acted on a request of ``job`` later than its bound: alert, and
        reconcile."""
        self.late.labels(*job_labels(job)).inc()

    def jobs_resent(self, jobs: Iterable[JobKey]) -> None:
        """The sweeper re-sent these jobs from the ledger."""
        for job in jobs:
            self.resent.labels(*job_labels(job)).inc()

    def task_ended(
        self, *, job: JobKey | None, task: str, outcome: Outcome, reason: str | None
    ) -> None:
        """Count one task run of ``job`` (None: its payload named none) by how it ended
        (:class:`~worker.core.outcome.Outcome`)."""
        of_job = job_labels(job)
        cause = reason or "unknown"
        if outcome.issues:
            self.issued.labels(*of_job).inc()
        if outcome.cancels:
            self.cancelled.labels(*of_job).inc()
        if outcome.duplicate:
            self.duplicates.labels(*of_job, task).inc()
        elif outcome is Outcome.FAILED and task == "issue":
            self.failed.labels(*of_job, cause).inc()
        elif outcome is Outcome.FAILED:
            self.cancel_failed.labels(*of_job, cause).inc()
        elif outcome is Outcome.CANCELLED_REISSUE_FAILED:
            self.failed.labels(*of_job, cause).inc()
        elif outcome in {Outcome.RETRY, Outcome.PARKED}:
            how = "countdown" if outcome is Outcome.RETRY else "parked"
            self.retries.labels(*of_job, task, cause, how).inc()
        elif outcome is Outcome.ERROR:
            self.errors.labels(*of_job, task).inc()


# -- state, read at scrape time ------------------------------------------------------


def queue_depth(app: Any, queue: str) -> int:
    """Messages waiting in ``queue``, asked of the broker through kombu (Redis or RabbitMQ).

    A passive declare changes nothing; on Redis it counts the queue's lists.
    A connection per scrape: a scrape every few seconds does not need a pool.
    """
    with app.connection_for_read(connect_timeout=5) as connection:
        connection.connect()
        channel = connection.channel()
        try:
            return int(channel.queue_declare(queue=queue, passive=True).message_count)
        except connection.channel_errors:
            return 0  # no queue yet: nothing was ever sent, or all of it was taken
        finally:
            channel.close()


class StateCollector:
    """Fleet-wide state from the broker and Redis, read when Prometheus scrapes.

    A read that fails does not fail the scrape (the counters are still
    served): ``cashreceipt_state_up`` says 0 instead.
    """

    def __init__(
        self,
        *,
        client: Callable[[], redis.Redis],
        queue_depth: Callable[[], int],
        queue: str,
        ingress_stream: str,
    ) -> None:
        self._client = client
        self._queue_depth = queue_depth
        self._queue = queue
        self._ingress_stream = ingress_stream

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry must not read Redis when this is registered."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Read everything, then yield it; on a failure, only ``cashreceipt_state_up 0``."""
        try:
            families = list(self._read())
        except Exception as error:  # noqa: BLE001 (Redis, the broker or kombu: the scrape lives)
            log.warning("metrics: reading the queue and the ledger failed: %s", error)
            families, up = [], 0.0
        else:
            up = 1.0
        yield from families
        yield GaugeMetricFamily(
            "cashreceipt_state_up",
            "1 when the queue and the ledger could be read at this scrape",
            value=up,
        )

    def _read(self) -> Iterator[Metric]:
        client = self._client()
        depth = GaugeMetricFamily(
            "cashreceipt_queue_messages",
            "Task messages waiting in the queue (not yet taken by a worker)",
            labels=["queue"],
        )
        depth.add_metric([self._queue], self._queue_depth())
        yield depth
        jobs = GaugeMetricFamily(
            "cashreceipt_ledger_jobs",
            "Ledger jobs that still need someone, by state (failed: dead letters)",
            labels=["state"],
        )
        for state, count in jobs_by_state(client).items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "cashreceipt_ledger_oldest_due_seconds",
            "How long the most overdue non-terminal job has waited for a worker",
            value=oldest_due_seconds(client),
        )
        yield GaugeMetricFamily(
            "cashreceipt_parked_messages",
            f"Messages the workers could not run, set aside in {DEAD_MESSAGES_KEY}",
            value=dead_message_count(client),
        )
        yield GaugeMetricFamily(
            "cashreceipt_ingress_backlog_entries",
            "Payment events in the ingress stream not yet handled (handled ones are deleted)",
            value=ingress_backlog(client, self._ingress_stream),
        )
        yield GaugeMetricFamily(
            "cashreceipt_ingress_dead_entries",
            f"Malformed ingress entries kept in {DEAD_ENTRIES_KEY}",
            value=dead_entry_count(client),
        )


# -- serving ----------------------------------------------------------------------------


def enable_multiprocess(directory: str) -> None:
    """Make every metric made from now on, in this process and its children, write to files.

    prometheus-client picks its value class from the environment when it is
    imported, which here is before the worker starts; it is picked again now.
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


@dataclass
class MetricsServer:
    """The /metrics endpoint of one worker and the directory its processes count in."""

    directory: str
    server: Any
    port: int

    def stop(self) -> None:
        """Stop serving and remove the files (a new start counts from zero)."""
        self.server.shutdown()
        self.server.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(*, port: int, address: str, collectors: Iterable[Collector]) -> MetricsServer:
    """Serve the multiprocess counters and ``collectors`` on ``address:port``, in a thread.

    Called in the worker's main process before the pool starts, so that every
    child inherits the directory. Raises OSError when the port is taken.
    """
    directory = tempfile.mkdtemp(prefix="cashreceipt-metrics-")
    enable_multiprocess(directory)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    for collector in collectors:
        registry.register(collector)
    try:
        server, _ = start_http_server(port, addr=address, registry=registry)
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return MetricsServer(directory=directory, server=server, port=server.server_port)
