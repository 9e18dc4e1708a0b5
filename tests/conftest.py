"""Shared fixtures: a private Redis, the i'mport sandbox, real worker processes.

Nothing here touches the shared Redis on 6379. Every integration test uses its
own imp_uids, so one session-wide worker and sandbox serve them all.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.support.rabbitmq import (
    BROKER_URL_VARIABLE,
    RABBITMQ_URL,
    RabbitVhost,
    Unavailable,
    delete_vhosts,
    use_rabbitmq,
)
from tests.support.redis_server import RedisServer, running_redis
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.worker import ProcessOutput, producer_app, running_worker, worker_env
from worker.core.urls import redact_url


def pytest_addoption(parser: pytest.Parser) -> None:
    """--chaos-long: the chaos suite's long profile (10,000 payments)."""
    parser.addoption(
        "--chaos-long", action="store_true", help="run the chaos suite with 10,000 payments"
    )


_rabbitmq_unavailable: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """BROKER=rabbitmq: check RabbitMQ is there; each private Redis gets a vhost on first use."""
    global _rabbitmq_unavailable  # noqa: PLW0603 (one per session)
    if not use_rabbitmq():
        return
    try:
        RabbitVhost(RABBITMQ_URL).check()
    except Unavailable as error:
        _rabbitmq_unavailable = str(error)
        return
    os.environ[BROKER_URL_VARIABLE] = RABBITMQ_URL


def pytest_unconfigure(config: pytest.Config) -> None:
    delete_vhosts()
    os.environ.pop(BROKER_URL_VARIABLE, None)


def pytest_report_header(config: pytest.Config) -> str:
    if not use_rabbitmq():
        return "broker: redis (BROKER=rabbitmq runs the integration tests on RabbitMQ)"
    if _rabbitmq_unavailable is None:
        return f"broker: rabbitmq at {redact_url(RABBITMQ_URL)}, a virtual host per private Redis"
    return f"broker: rabbitmq UNAVAILABLE, integration tests skipped: {_rabbitmq_unavailable}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On RabbitMQ, skip what needs the Redis broker, or everything when there is no RabbitMQ."""
    if not use_rabbitmq():
        return
    for item in items:
        if _rabbitmq_unavailable is not None and (
            item.get_closest_marker("integration") or item.get_closest_marker("chaos")
        ):
            item.add_marker(pytest.mark.skip(reason=_rabbitmq_unavailable))
        elif item.get_closest_marker("redis_broker"):
            item.add_marker(pytest.mark.skip(reason="reads or writes the Redis broker's own lists"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the whole session."""
    with running_redis(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for one test alone: no worker reads from it but those the test starts."""
    with running_redis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A durable Redis (AOF, fsync always) for one test alone, as production should run it."""
    with running_redis(tmp_path / "redis", appendonly=True) as server:
        yield server


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """The i'mport sandbox, as a real process on loopback."""
    with running_sandbox() as running:
        yield running


@pytest.fixture
def honest_sandbox() -> Iterator[Sandbox]:
    """A sandbox of the test's own that issues a second receipt rather than refusing it:
    a second POST the worker sends shows as a second receipt (docs/sandbox.md)."""
    with running_sandbox("--allow-duplicates") as running:
        yield running


SANDBOX_TESTS = Path(__file__).parent / "sandbox"


def _blind_requests(sandbox: Sandbox) -> dict[str, tuple[int, int]]:
    """Per receipt key: a payment's (``iamport:``), an external receipt's, a PortOne V2
    paymentId's (``portone:``; its cancels are POSTs, counted as the DELETEs are)."""
    audit = sandbox.audit()
    kinds = (
        ("iamport", audit["payments"], "blind_deletes"),
        ("iamport-external", audit["external"]["merchant_uids"], "blind_deletes"),
        ("portone", audit["portone"]["payment_ids"], "blind_cancels"),
    )
    return {
        f"{prefix}:{uid}": (figures["blind_posts"], figures[cancels])
        for prefix, per_uid, cancels in kinds
        for uid, figures in per_uid.items()
    }


@pytest.fixture(autouse=True)
def no_blind_requests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that drives the worker against the session's sandbox is an oracle check too:
    nothing was sent after a lookup had shown it wrong (docs/sandbox.md, blind requests).

    The sandbox suite makes blind requests on purpose, with a sandbox of its own.
    """
    if "sandbox" not in request.fixturenames or request.node.path.is_relative_to(SANDBOX_TESTS):
        yield
        return
    sandbox: Sandbox = request.getfixturevalue("sandbox")
    before = _blind_requests(sandbox)
    yield
    new = {
        imp_uid: counts
        for imp_uid, counts in _blind_requests(sandbox).items()
        if any(n > was for n, was in zip(counts, before.get(imp_uid, (0, 0)), strict=True))
    }
    assert not new, f"blind (POSTs, cancels) per receipt key while this test ran: {new}"


@pytest.fixture(scope="session")
def worker(redis_server: RedisServer, sandbox: Sandbox) -> Iterator[ProcessOutput]:
    """One real worker, started as an operator would, with fast test retries."""
    with running_worker(worker_env(redis_server.url, sandbox.url)) as output:
        yield output


@pytest.fixture(scope="session")
def producer(redis_server: RedisServer) -> Iterator[Celery]:
    """A producer that knows nothing of our code: a bare Celery app on the same Redis."""
    app = producer_app(redis_server.url)
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


@pytest.fixture
def merchant_uid() -> str:
    """An order nobody has seen yet (an external receipt's id)."""
    return f"order-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def payment_id() -> str:
    """A PortOne V2 payment nobody has seen yet."""
    return f"pay-{uuid.uuid4().hex[:12]}"
