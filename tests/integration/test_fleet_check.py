"""The start's fleet check runs in a child interpreter (worker.celery.fleet.ask_the_fleet).

What it answers is tested with real workers in test_rolling_deploy; that asking it
leaves the prefork pool whole is test_observability's prefork case (one child took every
task while the main process asked itself). Here: its answers when nothing or nobody
answers.
"""

from __future__ import annotations

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.wait import free_port
from worker.celery.fleet import FleetUnknown, ask_the_fleet


def test_an_empty_broker_has_no_older_workers(own_redis: RedisServer) -> None:
    app = Celery("fleet-check", broker=own_redis.url)
    assert ask_the_fleet(app) == []


def test_a_broker_that_does_not_answer_is_a_doubt_that_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    # The child reads the rest of its configuration from the environment it shares.
    monkeypatch.setenv("REDIS_URL", url)
    app = Celery("fleet-check", broker=url)
    with pytest.raises(FleetUnknown, match="the broker did not answer"):
        ask_the_fleet(app)


def test_a_child_that_does_not_end_in_time_is_a_doubt(own_redis: RedisServer) -> None:
    app = Celery("fleet-check", broker=own_redis.url)
    with pytest.raises(FleetUnknown, match="no answer within"):
        ask_the_fleet(app, deadline=0.01)
