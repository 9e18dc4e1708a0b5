"""``cashreceipt bench``: throughput, latency, CPU and memory, each as a ratio to baselines.

It starts a private ``redis-server`` and the i'mport sandbox with an added
latency L, then, for each L, three kinds of worker, each started as an
operator starts one (``celery -A ... worker``), one after the other on the
same Redis (flushed between runs):

``ours``
    ``celery -A worker worker`` in its default configuration.
``bare``
    :mod:`cashreceipt_bench.bare`: a receipt's HTTP calls and one XADD per task, with
    the same Celery settings: one POST for i'mport V1; for PortOne V2, the GET of the
    payment and the POST that our worker makes for ``kind: payment``.
``prefork``
    :mod:`cashreceipt_bench.prefork`: our task under Celery's default prefork
    configuration (a child per core, early acks, prefetch 4).

Profiles:

``throughput``
    N payment events are enqueued through the Python helper before the worker
    starts; the worker then drains them. Throughput and CPU are taken between
    the result event at 5% of N and the last one, from the stream entry ids
    (Redis's clock) and ``/proc`` (utime + stime of the worker's process
    tree), so start-up is not counted.
``latency``
    Light load: events at a steady rate (10/s), each timed from the call to
    the helper to the moment its result event is read from the stream.
``scaleout``
    Draining by one worker process, then by two (standing in for two hosts);
    latency-bound at its default L of 1000 ms.
``soak``
    A long run (100,000 receipts by default) with the worker's RSS sampled.

``--provider``
    Which receipts the throughput and latency profiles issue: ``iamport`` (V1, the
    default), ``portone`` (V2 payments, under the sandbox's ``/portone``; ours and bare
    only), or both, measured in the same run at each L.

Absolute numbers on a shared machine are noise; the ratios are taken in the
same run, minutes apart, on the same Redis and sandbox.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

import redis
import requests
from celery import Celery
from cryptography.fernet import Fernet

from cashreceipt_bench.bare import BARE_PORTONE_TASK, BARE_TASK
from cashreceipt_bench.servers import (
    RedisServer,
    free_port,
    sandbox_command,
    stop_process,
    wait_for_sandbox,
)
from worker.celery.producer import enqueue_issue
from worker.config.defaults import RESULT_STREAM
from worker.core.contract import QUEUE

T = TypeVar("T")
BIN = Path(sys.executable).parent
SANDBOX_KEY, SANDBOX_SECRET = "sandbox_key", "sandbox_secret"
#: The sandbox's PortOne V2 defaults (docs/sandbox.md, "PortOne V2").
SANDBOX_PORTONE_SECRET = "sandbox_portone_secret"  # noqa: S105 - the sandbox's documented default
SANDBOX_PORTONE_STORE, SANDBOX_PORTONE_CHANNEL = "store-sandbox", "channel-key-sandbox"
#: A new V2 payment in the sandbox: PAID by virtual account, 11,000 won.
PORTONE_AMOUNT = 11000
#: A run fails when no result event arrives for this long.
STALL_SECONDS = 60.0
#: The share of N left out at the start of a drain, as warm-up.
WARMUP_SHARE = 0.05
PROFILES = ("throughput", "latency", "scaleout", "soak")
IAMPORT, PORTONE = "iamport", "portone"
#: The receipts the throughput and latency profiles can issue (``--provider``).
PROVIDERS = (IAMPORT, PORTONE)
#: HTTP calls per receipt, ours and bare alike, at L each (PortOne V2: the payment's GET
#: and the POST).
CALLS = {IAMPORT: 1, PORTONE: 2}
#: The README's settings (and Celery's own): none of the caller's reach a measured worker.
SETTING_PREFIXES = (
    "CELERY_", "REDIS_", "IAMPORT_", "RETRY_", "RESULT_", "BROKER_", "PII_", "ALLOW_",
    "WORKER_", "LEDGER_", "SWEEP_", "DUPLICATE_", "INGRESS_", "ISSUANCE_", "METRICS_", "LOG_",
    "PORTONE_", "PROVIDERS",
)  # fmt: skip
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class BenchError(RuntimeError):
    """A run could not finish: a worker died or results stopped coming."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """What to run; every field has the default the README's command uses."""

    n: int = 1500
    latencies: tuple[int, ...] = (0, 50, 200)
    profiles: tuple[str, ...] = ("throughput", "latency")
    #: Whose receipts the throughput and latency profiles issue: i'mport V1's, PortOne V2's.
    providers: tuple[str, ...] = (IAMPORT,)
    light_rate: float = 10.0
    light_n: int = 100
    scaleout_latency: int = 1000
    scaleout_n: int = 1000
    soak_n: int = 100_000
    soak_latency: int = 0
    #: Worker processes per run of ours and the bare task (one per core is the default).
    processes: int = 1
    #: How many times each run is made; the tables show medians (latencies pooled).
    repeat: int = 1
    #: Extra environment for our worker and the bare one alike (e.g. WORKER_CONCURRENCY=64).
    env: Mapping[str, str] = field(default_factory=dict)
    #: Extra ``celery worker`` arguments for both (e.g. ``-P gevent``).
    worker_args: tuple[str, ...] = ()
    json_path: Path | None = None
    progress: bool = True


# -- processes ------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, from ``/proc/<pid>/task/*/children``."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as handle:
                    queue.extend(int(child) for child in handle.read().split())
            except OSError:
                continue
    return found


def tree_cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree, children that exited included."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/stat", encoding="ascii") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        # Fields 14-17 of stat (utime, stime, cutime, cstime), counted after the name.
        total += sum(int(value) for value in fields[11:15])
    return total / CLK_TCK


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process tree (forked children's shared pages counted in each)."""
    total = 0
    for member in _tree(pid):
        try:
            with open(f"/proc/{member}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1]) * PAGE_SIZE
        except OSError:
            continue
    return total


@dataclass
class WorkerProcess:
    """One ``celery ... worker`` process, its log in a file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def check(self) -> None:
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise BenchError(f"worker exited with {self.process.returncode}:\n{tail}")

    def stop(self) -> None:
        stop_process(self.process, 30)
        with suppress(ProcessLookupError):  # a prefork child left behind
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass(frozen=True, kw_only=True)
class Kind:
    """A worker to measure: which app, with which extra arguments."""

    name: str
    app: str
    args: tuple[str, ...] = ()
    our_task: bool = True
    #: Whose receipts it issues: i'mport V1's, or PortOne V2 payments'.
    provider: str = IAMPORT

    @property
    def label(self) -> str:
        """The name, and the provider when it is not i'mport (logs, progress)."""
        return self.name if self.provider == IAMPORT else f"{self.name}-{self.provider}"


class Bench:
    """The servers of one benchmark, and the runs made on them."""

    def __init__(self, options: Options, folder: Path, redis_server: RedisServer) -> None:
        self.options = options
        self.folder = folder
        self.redis_server = redis_server
        self.redis = redis.Redis.from_url(redis_server.url, decode_responses=True)
        self.key = Fernet.generate_key().decode()
        self.producer = Celery("bench-producer", broker=redis_server.url)
        self.producer.conf.task_serializer = "json"
        self.producer.conf.pii_encryption_keys = [self.key]
        # The helper refuses a payload of a provider the workers do not serve.
        self.producer.conf.providers = PROVIDERS
        self.sandbox_url = ""
        self._runs = 0

    # -- worker processes

    def env(self, *, extra: Mapping[str, str]) -> dict[str, str]:
        """A worker's environment: ours to the servers, every other setting at its default."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
        env.update(
            REDIS_URL=self.redis_server.url,
            IAMPORT_API_URL=self.sandbox_url,
            IAMPORT_KEY=SANDBOX_KEY,
            IAMPORT_SECRET=SANDBOX_SECRET,
            PII_ENCRYPTION_KEYS=self.key,
            # The bench's Redis runs without AOF, as the README's figures were measured:
            # its workers start on it knowingly (and say so at start).
            REDIS_DURABILITY="accept-risk",
        )
        env.update(extra)
        return env

    def portone_env(self) -> dict[str, str]:
        """A worker that serves PortOne V2 as well, against the sandbox's ``/portone``; its
        timeouts and settle bound at their defaults."""
        return {
            "PROVIDERS": f"{IAMPORT},{PORTONE}",
            "PORTONE_API_URL": f"{self.sandbox_url}/portone",
            "PORTONE_API_SECRET": SANDBOX_PORTONE_SECRET,
            "PORTONE_STORE_ID": SANDBOX_PORTONE_STORE,
        }

    def start_worker(self, kind: Kind, *, name: str) -> WorkerProcess:
        """``celery -A <app> worker`` as an operator starts it, in its own process group."""
        self._runs += 1
        log_path = self.folder / f"worker-{self._runs:03d}-{kind.label}.log"
        extra = () if kind.name == "prefork" else self.options.worker_args
        command = [
            str(BIN / "celery"), "-A", kind.app, "worker", "-n", f"{name}@%h", *kind.args, *extra,
        ]  # fmt: skip
        with log_path.open("wb") as log:
            # Each worker process on a host serves its metrics on a port of its own.
            extra_env = {
                "METRICS_PORT": str(free_port()),
                **(self.portone_env() if kind.provider == PORTONE else {}),
                **self.options.env,
            }
            process = subprocess.Popen(
                command,
                env=self.env(extra=extra_env),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        return WorkerProcess(process, log_path)

    @contextmanager
    def workers(self, kind: Kind, count: int = 1) -> Iterator[list[WorkerProcess]]:
        started = [self.start_worker(kind, name=f"bench{i + 1}") for i in range(count)]
        try:
            yield started
        finally:
            for worker in started:
                worker.stop()

    @contextmanager
    def sandbox(self, latency_ms: int) -> Iterator[str]:
        """The sandbox with ``--latency-ms``; its URL."""
        log_path = self.folder / f"sandbox-{latency_ms}ms.log"
        command = [*sandbox_command(), "--port", "0", "--latency-ms", str(latency_ms)]
        command += ["--log-level", "WARNING"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            url, _ = wait_for_sandbox(process, log_path)
            self.sandbox_url = url
            yield url
        finally:
            stop_process(process, 5)

    # -- producing

    def payload(self, run: str, index: int, provider: str = IAMPORT) -> dict[str, Any]:
        if provider == PORTONE:
            return {
                "provider": PORTONE,
                "kind": "payment",
                "payment_id": f"pay-{run}-{index}",
                "channel_key": SANDBOX_PORTONE_CHANNEL,
                "order_name": "Bench sale",
                "amount": PORTONE_AMOUNT,
                "identifier": "010-1234-5678",
                "identifier_type": "phone",
            }
        return {
            "imp_uid": f"imp_{run}_{index}",
            "merchant_uid": f"order-{run}-{index}",
            "identifier": "010-1234-5678",
            "identifier_type": "phone",
        }

    def payloads(self, kind: Kind, run: str, n: int) -> list[dict[str, Any]]:
        """``n`` payloads of the kind's provider, their V2 payments seeded in the sandbox
        (PAID by virtual account, 11,000 won): a V2 payment must exist to be read."""
        made = [self.payload(run, index, kind.provider) for index in range(n)]
        if kind.provider == PORTONE:
            with requests.Session() as admin:
                for payload in made:
                    admin.put(
                        f"{self.sandbox_url}/__sandbox__/portone/payments/{payload['payment_id']}",
                        json={},
                        timeout=10,
                    ).raise_for_status()
        return made

    def calls(self, kind: Kind, run: str) -> dict[str, int]:
        """The API calls the sandbox logged for a run's receipts, by method and path with
        the id left out: what each kind makes per receipt, counted rather than assumed.
        (i'mport's token calls name no receipt and are not counted.)"""
        if kind.provider == PORTONE:
            url, field, prefix = "__sandbox__/portone/requests", "paymentId", f"pay-{run}-"
        else:
            url, field, prefix = "__sandbox__/requests", "imp_uid", f"imp_{run}_"
        answer = requests.get(f"{self.sandbox_url}/{url}", timeout=60)
        answer.raise_for_status()
        counted: dict[str, int] = {}
        for entry in answer.json()["requests"]:
            found = entry.get(field)
            if isinstance(found, str) and found.startswith(prefix):
                name = f"{entry['method']} {entry['path'].replace(found, '{id}')}"
                counted[name] = counted.get(name, 0) + 1
        return counted

    def send(self, kind: Kind, payload: dict[str, Any]) -> str:
        """One payment event: through our helper, or for the bare task a plain send_task."""
        if kind.our_task:
            return enqueue_issue(payload, app=self.producer)
        task_id = str(uuid.uuid4())
        if kind.provider == PORTONE:
            bare = {name: payload[name] for name in ("payment_id", "channel_key", "order_name")}
            bare |= {"amount": PORTONE_AMOUNT, "identifier": "01012345678"}
            task, args = BARE_PORTONE_TASK, bare
        else:
            task, args = BARE_TASK, {"imp_uid": payload["imp_uid"], "identifier": "01012345678"}
        self.producer.send_task(task, args=[args], task_id=task_id, queue=QUEUE)
        return task_id

    def fresh(self) -> str:
        """An empty Redis for the next run, and a prefix for its imp_uids."""
        self.redis.flushall()
        return uuid.uuid4().hex[:8]

    # -- reading results

    def results(self) -> ResultReader:
        return ResultReader(self.redis)

    # -- the profiles

    def drain(
        self,
        kind: Kind,
        *,
        latency_ms: int,
        n: int,
        processes: int | None = None,
        profile: str = "throughput",
    ) -> dict[str, Any]:
        """Enqueue ``n`` events, start the worker(s), time the drain between 5% and 100%."""
        run = self.fresh()
        progress = Progress(f"{kind.label} L={latency_ms} enqueue", n, self.options.progress)
        for index, payload in enumerate(self.payloads(kind, run, n)):
            self.send(kind, payload)
            progress.update(index + 1)
        progress.done()
        reader = self.results()
        warmup = max(1, math.ceil(n * WARMUP_SHARE))
        progress = Progress(f"{kind.label} L={latency_ms} drain", n, self.options.progress)
        count = processes if processes is not None else self.options.processes
        with self.workers(kind, count) as started:
            reader.wait(warmup, started, progress)
            seen0 = reader.count
            cpu0 = sum(tree_cpu_seconds(w.pid) for w in started)
            reader.wait(n, started, progress)
            cpu1 = sum(tree_cpu_seconds(w.pid) for w in started)
            seen1 = reader.count
            rss = sum(tree_rss_bytes(w.pid) for w in started)
        progress.done()
        calls = self.calls(kind, run)
        first, last = reader.times_ms[warmup - 1], reader.times_ms[n - 1]
        elapsed = max(last - first, 1) / 1000
        bad = reader.unexpected(our_task=kind.our_task)
        if bad:
            raise BenchError(
                f"{kind.label}: {len(bad)} result events were not a new receipt: {bad[:3]}"
            )
        return {
            "profile": profile,
            "kind": kind.name,
            "provider": kind.provider,
            "latency_ms": latency_ms,
            "n": n,
            "processes": count,
            "receipts_per_s": (n - warmup) / elapsed,
            "cpu_ms_per_receipt": (cpu1 - cpu0) * 1000 / max(seen1 - seen0, 1),
            "rss_mb": rss / 2**20,
            "calls_per_receipt": sum(calls.values()) / n,
            "calls": calls,
        }

    def light(self, kind: Kind, *, latency_ms: int) -> dict[str, Any]:
        """Events at a steady, light rate; the time from enqueue to result event of each."""
        run = self.fresh()
        opts = self.options
        reader = self.results()
        warmups, payloads = (
            self.payloads(kind, run + "w", 5),
            self.payloads(kind, run, opts.light_n),
        )
        with self.workers(kind, self.options.processes) as started:
            # Warm up: the worker is ready, has its token and connections.
            for index, payload in enumerate(warmups):
                self.send(kind, payload)
                reader.wait(index + 1, started, None)
            reader.follow()
            sent: dict[str, float] = {}
            progress = Progress(f"{kind.label} L={latency_ms} light", opts.light_n, opts.progress)
            start = time.perf_counter()
            for index in range(opts.light_n):
                delay = start + index / opts.light_rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent_at = time.perf_counter()
                sent[self.send(kind, payloads[index])] = sent_at
                progress.update(index + 1)
            reader.wait(5 + opts.light_n, started, None)
            rss = sum(tree_rss_bytes(w.pid) for w in started)
            reader.stop()
        progress.done()
        latencies = sorted(
            (reader.seen_at[task_id] - sent_at) * 1000 for task_id, sent_at in sent.items()
        )
        return {
            "profile": "latency",
            "kind": kind.name,
            "provider": kind.provider,
            "latency_ms": latency_ms,
            "n": opts.light_n,
            "rate_per_s": opts.light_rate,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
            "p99_ms": percentile(latencies, 99),
            "max_ms": latencies[-1],
            "rss_mb": rss / 2**20,
            "latencies_ms": [round(x, 2) for x in latencies],
        }

    def soak(self, kind: Kind, *, latency_ms: int, n: int) -> dict[str, Any]:
        """``n`` events fed with a bounded backlog while the worker drains; RSS sampled."""
        run = self.fresh()
        reader = self.results()
        progress = Progress(f"soak L={latency_ms}", n, self.options.progress)
        samples: list[tuple[int, float]] = []
        backlog = 2000
        with self.workers(kind) as started:
            started_at = time.monotonic()
            sent = 0
            while reader.count < n:
                while sent < n and sent - reader.count < backlog:
                    self.send(kind, self.payload(run, sent))
                    sent += 1
                reader.poll(block_ms=200)
                started[0].check()
                progress.update(reader.count)
                step = max(1, n // 20)
                if reader.count // step > len(samples) - 1 or not samples:
                    samples.append((reader.count, tree_rss_bytes(started[0].pid) / 2**20))
            elapsed = time.monotonic() - started_at
            samples.append((reader.count, tree_rss_bytes(started[0].pid) / 2**20))
        progress.done()
        # The first tenth is warm-up: pools fill, caches load.
        steady = [mb for count, mb in samples if count >= n // 10] or [samples[-1][1]]
        return {
            "profile": "soak",
            "kind": kind.name,
            "latency_ms": latency_ms,
            "n": n,
            "receipts_per_s": n / elapsed,
            "rss_mb_start": steady[0],
            "rss_mb_max": max(steady),
            "rss_mb_end": steady[-1],
            "rss_growth": max(steady) / steady[0] - 1,
            "rss_samples": samples,
        }


class ResultReader:
    """Reads the result stream from the start of a run, timing each entry."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._last = "0-0"
        self.count = 0
        self.times_ms: list[int] = []
        self.types: list[str] = []
        self.data: list[dict[str, Any]] = []
        #: The HTTP status of the bare task's last call, by event.
        self.statuses: list[str] = []
        self.seen_at: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def poll(self, *, block_ms: int) -> None:
        answer: Any = self._redis.xread({RESULT_STREAM: self._last}, count=5000, block=block_ms)
        now = time.perf_counter()
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                self._last = entry_id
                data = json.loads(fields.get("data") or "{}")
                self.times_ms.append(int(entry_id.partition("-")[0]))
                self.types.append(fields.get("type", ""))
                self.statuses.append(fields.get("status", ""))
                self.data.append(data)
                self.seen_at[str(data.get("task_id"))] = now
                self.count += 1

    def wait(self, count: int, workers: Sequence[WorkerProcess], progress: Progress | None) -> None:
        """Until ``count`` results are in; fails when the workers die or stall."""
        last_change, last_count = time.monotonic(), self.count
        while self.count < count:
            if self._thread is None:
                self.poll(block_ms=100)
            else:
                time.sleep(0.005)
            for worker in workers:
                worker.check()
            if progress is not None:
                progress.update(self.count)
            if self.count != last_count:
                last_change, last_count = time.monotonic(), self.count
            elif time.monotonic() - last_change > STALL_SECONDS:
                raise BenchError(f"no result for {STALL_SECONDS:g}s at {self.count}/{count}")

    def follow(self) -> None:
        """Read in a thread of its own from now on, so each entry's arrival is timed at once."""

        def loop() -> None:
            while not self._stop.is_set():
                self.poll(block_ms=50)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def unexpected(self, *, our_task: bool) -> list[str]:
        """Events other than a new, non-duplicate receipt (or the bare task's event of a
        call answered 200: a refused call is cheaper, and would flatter the baseline)."""
        if not our_task:
            return [
                f"{kind} {status}"
                for kind, status in zip(self.types, self.statuses, strict=True)
                if (kind, status) != ("bench.bare", "200")
            ]
        return [
            f"{kind}: {data.get('error') or data.get('duplicate')}"
            for kind, data in zip(self.types, self.data, strict=True)
            if kind != "cash_receipt.issued" or data.get("duplicate")
        ]


class Progress:
    """A one-line progress bar on stderr, redrawn at most ten times a second."""

    def __init__(self, label: str, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.stream = stream or sys.stderr
        # On a terminal the bar is redrawn in place; in a log, only its last state is written.
        self.live = self.stream.isatty()
        self.started = time.monotonic()
        self._drawn = 0.0
        self._value = 0

    def update(self, value: int) -> None:
        self._value = value
        now = time.monotonic()
        if self.enabled and self.live and (now - self._drawn >= 0.1 or value >= self.total):
            self._drawn = now
            width = 30
            filled = int(width * min(value, self.total) / max(self.total, 1))
            rate = value / max(now - self.started, 1e-9)
            self.stream.write(
                f"\r{self.label:<28} [{'#' * filled}{'.' * (width - filled)}] "
                f"{value}/{self.total} {rate:,.0f}/s "
            )
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.live, self._drawn = True, 0.0
            self.update(self._value)
            self.stream.write("\n")
            self.stream.flush()


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile by the nearest-rank method."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return float(sorted_values[rank - 1])


# -- the whole benchmark ---------------------------------------------------------

OURS = Kind(name="ours", app="worker")
BARE = Kind(name="bare", app="cashreceipt_bench.bare", our_task=False)
#: The same two on PortOne V2 payments: no prefork baseline (V1's answers what the pool buys).
OURS_PORTONE = Kind(name="ours", app="worker", provider=PORTONE)
BARE_PORTONE = Kind(name="bare", app="cashreceipt_bench.bare", our_task=False, provider=PORTONE)
#: Celery's defaults: prefork, a child per core, prefetch 4; early acks come from the app.
PREFORK = Kind(
    name="prefork",
    app="cashreceipt_bench.prefork",
    args=("-P", "prefork", "-c", str(os.cpu_count() or 1), "--prefetch-multiplier", "4"),
)


def drain_kinds(providers: Sequence[str]) -> list[Kind]:
    """The kinds the throughput profile drains, for the providers asked for."""
    kinds = [OURS, BARE, PREFORK] if IAMPORT in providers else []
    return kinds + ([OURS_PORTONE, BARE_PORTONE] if PORTONE in providers else [])


def light_kinds(providers: Sequence[str]) -> list[Kind]:
    """The kinds the latency profile times, for the providers asked for."""
    return [kind for kind in drain_kinds(providers) if kind is not PREFORK]


def prefork_n(n: int, latency_ms: int) -> int:
    """Fewer events for the prefork baseline when it is latency-bound: about 10 s of work."""
    if latency_ms <= 0:
        return n
    rate = (os.cpu_count() or 1) / (latency_ms / 1000)
    return max(40, min(n, int(rate * 10)))


def run(options: Options, *, out: TextIO) -> list[dict[str, Any]]:
    """Run the chosen profiles; print the tables to ``out``; return every row."""
    rows: list[dict[str, Any]] = []
    # SIGTERM unwinds like Ctrl-C, so the workers, the sandbox and Redis are stopped.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="cashreceipt-bench-") as tmp:
            rows = _run_in(Path(tmp), options)
    finally:
        signal.signal(signal.SIGTERM, previous)
    report = render(summarize(rows), options)
    out.write(report)
    if options.json_path is not None:
        document = {
            "machine": machine(),
            "options": _jsonable(asdict(options)),
            "summary": summarize(rows),
            "runs": rows,
        }
        options.json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return rows


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_in(folder: Path, options: Options) -> list[dict[str, Any]]:
    server = RedisServer(folder / "redis")
    server.start()
    try:
        return _profiles(Bench(options, folder, server), options)
    finally:
        server.stop()


def _profiles(bench: Bench, options: Options) -> list[dict[str, Any]]:
    """Every run, each kind ``repeat`` times, in an order that rotates between repeats.

    Load from other work on the machine drifts over minutes; rotating the order
    spreads the drift over all kinds instead of always favouring the first.
    """
    rows: list[dict[str, Any]] = []
    for latency in options.latencies:
        if not {"throughput", "latency"} & set(options.profiles):
            break
        with bench.sandbox(latency):
            for repeat in range(options.repeat):
                if "throughput" in options.profiles:
                    kinds = _rotated(drain_kinds(options.providers), repeat)
                    for kind in kinds:
                        single = kind is PREFORK
                        n = prefork_n(options.n, latency) if single else options.n
                        row = bench.drain(
                            kind, latency_ms=latency, n=n, processes=1 if single else None
                        )
                        rows.append({**row, "repeat": repeat})
                if "latency" in options.profiles:
                    for kind in _rotated(light_kinds(options.providers), repeat):
                        rows.append({**bench.light(kind, latency_ms=latency), "repeat": repeat})
    if "scaleout" in options.profiles:
        with bench.sandbox(options.scaleout_latency):
            for repeat in range(options.repeat):
                for processes in _rotated((1, 2), repeat):
                    row = bench.drain(
                        OURS,
                        latency_ms=options.scaleout_latency,
                        n=options.scaleout_n,
                        processes=processes,
                        profile="scaleout",
                    )
                    rows.append({**row, "repeat": repeat})
    if "soak" in options.profiles:
        with bench.sandbox(options.soak_latency):
            rows.append(bench.soak(OURS, latency_ms=options.soak_latency, n=options.soak_n))
    return rows


def _rotated(items: Sequence[T], by: int) -> list[T]:
    shift = by % len(items)
    return [*items[shift:], *items[:shift]]


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (profile, kind, provider, L, processes): medians of the repeats;
    latencies pooled."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (
            row["profile"],
            row["kind"],
            row.get("provider", IAMPORT),
            row["latency_ms"],
            row.get("processes"),
        )
        groups.setdefault(key, []).append(row)
    summary = []
    for members in groups.values():
        merged = dict(members[0])
        merged["repeats"] = len(members)
        for name, value in members[0].items():
            if isinstance(value, float) and name not in {"rss_growth"}:
                merged[name] = statistics.median(m[name] for m in members)
        if merged["profile"] == "latency":
            pooled = sorted(x for m in members for x in m["latencies_ms"])
            for q in (50, 95, 99):
                merged[f"p{q}_ms"] = percentile(pooled, q)
            merged["max_ms"], merged["n"] = pooled[-1], len(pooled)
        summary.append(merged)
    return summary


def machine() -> dict[str, Any]:
    """Where the figures came from."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((ln.split(":", 1)[1].strip() for ln in handle if "model name" in ln), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0]}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# -- the tables ------------------------------------------------------------------

Row = dict[str, Any]


def _find(rows: Sequence[Row], **match: Any) -> Row | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(row) for row in body)]) + "\n"


def _get(row: Row | None, name: str) -> float | None:
    # A row from before a column was added (calls_per_receipt) has none of it.
    value = None if row is None else row.get(name)
    return None if value is None else float(value)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def _num(value: float | None, fmt: str = ".0f") -> str:
    return format(value, fmt) if value is not None else "-"


def render(rows: Sequence[Row], options: Options) -> str:
    """The tables and the targets, as text."""
    parts: list[str] = []
    verdicts: list[str] = []
    for section in (_throughput, _light, _scaleout, _soak):
        text, found = section(rows, options)
        parts.append(text)
        verdicts += found
    if verdicts:
        parts.append("\nTargets\n" + "".join(f"  {v}\n" for v in verdicts))
    return "".join(parts).lstrip("\n")


#: What a provider's tables add to their title: V1's are the README's first tables as they were.
TITLES = {
    IAMPORT: "",
    PORTONE: ", PortOne V2 payments (ours and bare: GET the payment, then POST the receipt)",
}
_PREFORK_COLUMNS = {"prefork/s", "÷prefork", "rss prefork"}


def _provider_rows(rows: Sequence[Row], profile: str, provider: str) -> list[Row]:
    return [r for r in rows if r["profile"] == profile and r.get("provider", IAMPORT) == provider]


Section = Callable[[Sequence[Row], Options, str], tuple[str, list[str]]]


def _per_provider(section: Section, rows: Sequence[Row], options: Options) -> tuple[str, list[str]]:
    """One table per provider asked for, in the order asked (V1's first by default)."""
    texts, verdicts = [], []
    for provider in options.providers:
        text, found = section(rows, options, provider)
        texts.append(text)
        verdicts += found
    return "".join(texts), verdicts


def _throughput(rows: Sequence[Row], options: Options) -> tuple[str, list[str]]:
    return _per_provider(_throughput_of, rows, options)


def _throughput_of(rows: Sequence[Row], options: Options, provider: str) -> tuple[str, list[str]]:
    drains = _provider_rows(rows, "throughput", provider)
    v1 = _provider_rows(rows, "throughput", IAMPORT) if provider != IAMPORT else []
    label = "" if provider == IAMPORT else " V2"
    body, verdicts = [], []
    for latency in options.latencies:
        ours = _find(drains, kind="ours", latency_ms=latency)
        bare = _find(drains, kind="bare", latency_ms=latency)
        pre = _find(drains, kind="prefork", latency_ms=latency)
        if ours is None:
            continue
        rate, cpu, calls = "receipts_per_s", "cpu_ms_per_receipt", "calls_per_receipt"
        body.append([
            str(latency),
            _num(_get(ours, rate)), _num(_get(bare, rate)), _num(_get(pre, rate), ".1f"),
            _ratio(_get(ours, rate), _get(bare, rate)), _ratio(_get(ours, rate), _get(pre, rate)),
            _num(_get(ours, cpu), ".2f"), _num(_get(bare, cpu), ".2f"),
            _ratio(_get(ours, cpu), _get(bare, cpu)),
            _num(_get(ours, "rss_mb")), _num(_get(bare, "rss_mb")), _num(_get(pre, "rss_mb")),
            _num(_get(ours, calls), ".2f"), _num(_get(bare, calls), ".2f"),
        ])  # fmt: skip
        if bare:
            ratio = ours[rate] / bare[rate]
            ours_v1, bare_v1 = (_find(v1, kind=k, latency_ms=latency) for k in ("ours", "bare"))
            beside = f" (V1 {_ratio(_get(ours_v1, rate), _get(bare_v1, rate))})" if v1 else ""
            verdicts.append(
                _verdict(
                    f"L={latency}{label}: throughput ours/bare {ratio:.2f} >= 0.70{beside}",
                    ratio >= 0.7,
                )
            )
        if pre and latency >= 200:
            ratio = ours[rate] / pre[rate]
            verdicts.append(_verdict(f"L={latency}: ours/prefork {ratio:.1f} >= 20", ratio >= 20))
        if bare and latency == 0 and provider == IAMPORT:
            ratio = ours[cpu] / bare[cpu]
            verdicts.append(_verdict(f"L=0: CPU ours/bare {ratio:.2f} <= 1.5", ratio <= 1.5))
    if not body:
        return "", []
    processes = _get(_find(drains, kind="ours"), "processes")
    header = [
        "L ms", "ours/s", "bare/s", "prefork/s", "÷bare", "÷prefork", "cpu ours", "cpu bare",
        "cpu÷bare", "rss ours", "rss bare", "rss prefork", "calls ours", "calls bare",
    ]  # fmt: skip
    if not any(r["kind"] == "prefork" for r in drains):
        kept = [i for i, name in enumerate(header) if name not in _PREFORK_COLUMNS]
        header, body = [header[i] for i in kept], [[row[i] for i in kept] for row in body]
    # V1's table comes first, as it always did; a later one is set apart by a blank line.
    text = (
        ("" if provider == IAMPORT else "\n")
        + f"Throughput{TITLES[provider]}: drain of N prefilled events, {processes:.0f} worker "
        "process(es) of ours and of bare, medians of the repeats (receipts/s; CPU ms per "
        "receipt; RSS MB; API calls per receipt, as the sandbox logged them)\n"
        + _table(header, body)
    )
    return text, verdicts


def _light(rows: Sequence[Row], options: Options) -> tuple[str, list[str]]:
    return _per_provider(_light_of, rows, options)


def _light_of(rows: Sequence[Row], options: Options, provider: str) -> tuple[str, list[str]]:
    lights = _provider_rows(rows, "latency", provider)
    # The provider's own latency: L per call, and a V2 receipt makes two.
    calls = CALLS[provider]
    body, verdicts = [], []
    for latency in options.latencies:
        ours = _find(lights, kind="ours", latency_ms=latency)
        bare = _find(lights, kind="bare", latency_ms=latency)
        if ours is None:
            continue
        cells = [str(latency), f"{ours['rate_per_s']:g}", str(ours["n"])]
        for row in (ours, bare):
            cells += [_num(_get(row, k), ".1f") for k in ("p50_ms", "p95_ms", "p99_ms")]
        bare_wait, waited = _get(bare, "p50_ms"), calls * latency
        cells.append(_ratio(ours["p50_ms"] - waited, bare_wait - waited if bare_wait else None))
        body.append(cells)
        if provider != IAMPORT:
            continue
        ok = ours["p50_ms"] <= latency + 15 and ours["p99_ms"] <= latency + 60
        verdicts.append(
            _verdict(
                f"L={latency}: p50 {ours['p50_ms']:.1f} <= {latency + 15}, "
                f"p99 {ours['p99_ms']:.1f} <= {latency + 60} ms",
                ok,
            )
        )
    if not body:
        return "", []
    title = f"Latency at light load{TITLES[provider]}: enqueue -> result event, ms (repeats pooled)"
    text = f"\n{title}\n" + _table(
        ["L ms", "events/s", "events", "ours p50", "p95", "p99", "bare p50", "p95", "p99",
         "(p50-L)÷bare" if calls == 1 else f"(p50-{calls}L)÷bare"],
        body,
    )  # fmt: skip
    return text, verdicts


def _scaleout(rows: Sequence[Row], options: Options) -> tuple[str, list[str]]:
    del options
    one = _find(rows, kind="ours", processes=1, profile="scaleout")
    two = _find(rows, kind="ours", processes=2, profile="scaleout")
    if one is None or two is None:
        return "", []
    ratio = two["receipts_per_s"] / one["receipts_per_s"]
    text = "\nScale-out: the same drain by one worker process and by two (receipts/s)\n" + _table(
        ["L ms", "N", "1 process", "2 processes", "2÷1", "cpu ms (1)", "cpu ms (2)"],
        [[str(one["latency_ms"]), str(one["n"]), _num(one["receipts_per_s"]),
          _num(two["receipts_per_s"]), f"{ratio:.2f}",
          _num(one["cpu_ms_per_receipt"], ".2f"), _num(two["cpu_ms_per_receipt"], ".2f")]],
    )  # fmt: skip
    return text, [_verdict(f"scale-out: 2 processes / 1 = {ratio:.2f} >= 1.7", ratio >= 1.7)]


def _soak(rows: Sequence[Row], options: Options) -> tuple[str, list[str]]:
    del options
    parts, verdicts = [], []
    for soak in (r for r in rows if r["profile"] == "soak"):
        parts.append("\nSoak: RSS of the worker in MB, after the first tenth\n")
        parts.append(_table(
            ["L ms", "N", "receipts/s", "rss start", "rss max", "rss end", "growth"],
            [[str(soak["latency_ms"]), str(soak["n"]), _num(soak["receipts_per_s"]),
              _num(soak["rss_mb_start"], ".1f"), _num(soak["rss_mb_max"], ".1f"),
              _num(soak["rss_mb_end"], ".1f"), f"{soak['rss_growth']:+.1%}"]],
        ))  # fmt: skip
        growth = soak["rss_growth"]
        verdicts.append(_verdict(f"soak: RSS growth {growth:+.1%} <= 10%", growth <= 0.10))
    return "".join(parts), verdicts


def _verdict(text: str, ok: bool) -> str:
    return f"{'met   ' if ok else 'MISSED'} {text}"


def parse_env(pairs: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` pairs; anything else is an error."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--env takes NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def split_args(text: str | None) -> tuple[str, ...]:
    return tuple(shlex.split(text or ""))
