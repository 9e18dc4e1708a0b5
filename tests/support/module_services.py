"""A Redis, a sandbox and a producer for one test module alone.

For modules whose workers run with settings of their own, or whose faults and
latency are global to a sandbox: the session's worker must not take their
messages, and their faults must not reach other tests. Import the three
fixtures into the module; they replace the session's ones there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer, running_redis
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.worker import producer_app


@pytest.fixture(name="own_redis", scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A durable (AOF) redis-server of this module's own."""
    with running_redis(tmp_path_factory.mktemp("module-redis"), appendonly=True) as server:
        yield server


@pytest.fixture(name="own_sandbox", scope="module")
def module_sandbox() -> Iterator[Sandbox]:
    """A sandbox of this module's own: its faults and latency are global."""
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture(name="producer", scope="module")
def module_producer(own_redis: RedisServer) -> Iterator[Celery]:
    """The Python helper's app on this module's Redis (and its broker)."""
    app = producer_app(own_redis.url)
    yield app
    app.close()
