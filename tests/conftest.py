"""Shared fixtures: a private Redis, the i'mport sandbox, real worker processes.

Nothing here touches the shared Redis on 6379. Every integration test uses its
own imp_uids, so one session-wide worker and sandbox serve them all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.worker import TEST_PII_KEY, ProcessOutput, running_worker, worker_env


def pytest_addoption(parser: pytest.Parser) -> None:
    """--chaos-long: the chaos suite's long profile (10,000 payments)."""
    parser.addoption(
        "--chaos-long", action="store_true", help="run the chaos suite with 10,000 payments"
    )


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole session."""
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone: no worker reads from it but those the test starts."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The i'mport sandbox, as a real process on loopback."""
    with running_sandbox() as running:
        yield running


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[ProcessOutput]:
    """One real worker, started as an operator would, with fast test retries."""
    with running_worker(worker_env(redis_server.url, sandbox.url)) as output:
        yield output


@pytest.fixture(scope="session")
def producer(redis_server: RedisServer) -> Iterator[Celery]:
    """A producer that knows nothing of our code: a bare Celery app on the same Redis."""
    app = Celery("checkout", broker=redis_server.url)
    app.conf.task_serializer = "json"
    # What our helper reads when this app is handed to it (worker.producer).
    app.conf.pii_encryption_keys = [TEST_PII_KEY]
    yield app
    app.close()


@pytest.fixture
def results(redis_server: RedisServer) -> ResultStream:
    """The result stream, read as a consumer would."""
    return ResultStream(redis_server.client())


@pytest.fixture
def imp_uid() -> str:
    """A payment nobody has seen yet."""
    return f"imp_{uuid.uuid4().hex[:12]}"
