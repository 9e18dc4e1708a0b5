"""Real worker processes, started the way an operator starts them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from celery import Celery
from cryptography.fernet import Fernet

from tests.support.commands import WORKER, argv
from tests.support.rabbitmq import broker_for
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from worker.contract import rabbitmq_queues

ROOT = Path(__file__).resolve().parents[2]
#: The Fernet key test workers and producers seal identifiers with.
TEST_PII_KEY = Fernet.generate_key().decode()
BIN = Path(sys.executable).parent


class ProcessOutput:
    """Collects a process's combined output from a reader thread."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._process = process
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        """The process id (for a thread-pool worker, the only process)."""
        return int(self._process.pid)

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self._process.poll() is None

    @property
    def text(self) -> str:
        """Everything printed so far."""
        return "".join(self.lines)

    def finish(self, timeout: float = 10) -> str:
        """Wait for the stream to end and return all of it."""
        self._thread.join(timeout)
        return self.text


def worker_env(redis_url: str, sandbox_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a test worker: fast retries, short timeouts."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("CELERY_", "IAMPORT_", "RETRY_", "RESULT_", "BROKER_", "PII_", "ALLOW_", "LOG_")
        )
    }
    env.update(
        {
            "REDIS_URL": redis_url,
            "IAMPORT_API_URL": sandbox_url,
            "IAMPORT_KEY": "sandbox_key",
            "IAMPORT_SECRET": "sandbox_secret",
            "IAMPORT_TIMEOUT": "1",
            # The sandbox acts on a request at once (or within a scripted latency): an ambiguous
            # POST is settled a second after it was sent, not i'mport's 60.
            "IAMPORT_SETTLE_SECONDS": "1",
            "RETRY_BACKOFF_BASE": "0.05",
            "RETRY_BACKOFF_MAX": "0.2",
            "RETRY_MAX_ATTEMPTS": "5",
            "WORKER_CONCURRENCY": "8",
            # SIGTERM: two seconds for the tasks in hand, then the rest is handed back.
            "WORKER_SOFT_SHUTDOWN_TIMEOUT": "2",
            "PII_ENCRYPTION_KEYS": TEST_PII_KEY,
            "PYTHONUNBUFFERED": "1",
            # Many workers run at once on one host here; the metrics tests give theirs a port.
            "METRICS_PORT": "0",
            # The one place the suite's workers and ingress processes accept a Redis without
            # AOF: the session's Redis runs without it (an fsync per write would slow every
            # test), and test_durability.py checks the refusal this lets them skip.
            "REDIS_DURABILITY": "accept-risk",
        }
    )
    broker = broker_for(redis_url)
    if broker is not None:
        # BROKER=rabbitmq: the messages go through RabbitMQ, the rest stays in Redis.
        env["BROKER_URL"] = broker
    env.update(overrides)
    return env


#: The providers a worker of :func:`portone_env` serves, as its producers must name them.
BOTH_PROVIDERS = ("iamport", "portone")


def portone_env(redis_url: str, sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    """:func:`worker_env` of a worker that serves PortOne V2 too (``PROVIDERS=iamport,portone``),
    through the sandbox's ``/portone``. Every worker on one queue serves the same providers:
    such a worker needs a Redis (a queue) of its own."""
    v2 = {
        "PROVIDERS": ",".join(BOTH_PROVIDERS),
        "PORTONE_API_URL": sandbox.portone_url,
        "PORTONE_API_SECRET": sandbox.portone_secret,
        "PORTONE_STORE_ID": sandbox.portone_store_id,
        "PORTONE_TIMEOUT": "1",
        "PORTONE_SETTLE_SECONDS": "1",
    }
    return worker_env(redis_url, sandbox.url, **{**v2, **overrides})


def producer_app(redis_url: str) -> Celery:
    """A producer that knows nothing of our code: a bare Celery app on the test broker.

    On Redis it shares the worker's Redis; on RabbitMQ (BROKER=rabbitmq) it
    declares the queue as the worker does, and names the Redis the helper's
    ledger lives in.
    """
    broker = broker_for(redis_url)
    app = Celery("checkout", broker=broker or redis_url)
    app.conf.task_serializer = "json"
    # What our helper reads when this app is handed to it (worker.celery.producer).
    app.conf.pii_encryption_keys = [TEST_PII_KEY]
    if broker is not None:
        app.conf.ledger_backend_url = redis_url
        app.conf.task_queues = rabbitmq_queues()
    return app


def worker_argv(*extra: str) -> list[str]:
    """The worker's command, with a node name of its own unless ``extra`` names one.

    As each container has its own host name in production. Two workers of one
    name collide on RabbitMQ (their remote-control queue is exclusive).
    """
    named = "-n" in extra or any(arg.startswith(("--hostname", "-n")) for arg in extra)
    node = () if named else ("-n", f"test-{uuid.uuid4().hex[:8]}@%h")
    return argv(WORKER, *node, *extra)


@contextmanager
def running_worker(
    env: Mapping[str, str], *extra: str, command: list[str] | None = None, tree: Path = ROOT
) -> Iterator[ProcessOutput]:
    """``celery -A worker worker`` in a subprocess, ready to take tasks.

    ``command`` and ``tree``: another start command, run from another release's tree.
    """
    process = subprocess.Popen(
        command or worker_argv(*extra),
        cwd=tree,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput(process)
    try:
        wait_for(
            lambda: " ready." in output.text or process.poll() is not None,
            timeout=30,
            message="the worker to be ready",
        )
        if process.poll() is not None:
            raise AssertionError(f"worker exited at start:\n{output.finish()}")
        yield output
    finally:
        stop(process)
        # The reader thread may still hold lines the process wrote before it exited: an
        # assertion on the output after the `with` must see all of it.
        output.finish()


@contextmanager
def unready_worker(
    env: Mapping[str, str], *extra: str
) -> Iterator[tuple[subprocess.Popen[str], ProcessOutput]]:
    """``celery -A worker worker`` not waited on: for a worker that must fail to get ready."""
    process = subprocess.Popen(
        worker_argv(*extra),
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput(process)
    try:
        yield process, output
    finally:
        stop(process)
        output.finish()  # all of it, for assertions after the `with`


def stop(process: subprocess.Popen[str], *, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
