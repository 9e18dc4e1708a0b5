"""A retry that cannot be published leaves its message with the broker, never acked.

Celery's ``Task.retry`` turns a retry it cannot publish into
``Reject(requeue=False)``, and rejecting without requeue is an ack: when the
broker takes the ack but refused the publish (a Redis out of memory refuses
LPUSH, not HDEL; a broker back up a moment later), the message is gone and
its task message never ends in an event. Here a real worker on a private
Redis meets exactly that: the Redis runs out of memory while the task waits
on i'mport, so recording the answer fails, and so does publishing the retry.
"""

from __future__ import annotations

import uuid

import pytest
from celery import Celery

# This module's own Redis, sandbox and producer: the test fills its Redis up.
from tests.support.module_services import (  # noqa: F401
    module_producer,
    module_redis,
    module_sandbox,
)
from tests.support.rabbitmq import broker_for
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import running_worker, worker_env
from worker.producer import enqueue_issue

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_a_retry_that_cannot_be_published_is_not_dropped(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    if broker_for(own_redis.url) is not None:
        pytest.skip("the fault is the Redis broker's: out of memory, it refuses the publish")
    imp_uid = f"unpublished_{uuid.uuid4().hex[:8]}"
    own_sandbox.admin.script(
        imp_uid, {"kind": "latency", "ms": 800, "method": "POST", "endpoint": "receipts"}
    )
    admin = own_redis.client()
    env = worker_env(
        own_redis.url,
        own_sandbox.url,
        # Only the message itself can finish the job here: no sweep within the test,
        # and a visibility timeout as short as the settings allow (about a lease).
        SWEEP_INTERVAL="600",
        DUPLICATE_WAIT="0",
        RETRY_COUNTDOWN_MAX="0.3",
    )
    with running_worker(env) as output:
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        wait_for(
            lambda: any(r["method"] == "POST" for r in own_sandbox.admin.requests(imp_uid)),
            timeout=20,
            interval=0.02,
            message="the POST to reach the sandbox",
        )
        # While i'mport holds the POST, Redis fills up: writes are refused, deletes are not.
        admin.config_set("maxmemory", 1)
        try:
            wait_for(
                lambda: any(
                    line in output.text for line in ("could not publish its retry", "issued after")
                ),
                timeout=20,
                message="the task to fail to publish its retry",
            )
        finally:
            admin.config_set("maxmemory", 0)
        assert "could not publish its retry" in output.text, output.text
        # Back with the broker, unacked: kombu restores it once the visibility timeout
        # passed (about a lease here), and by then the job's lease has passed too.
        event = ResultStream(own_redis.client()).wait(task_id, timeout=150)
        assert event["type"] == "cash_receipt.issued"
        assert not event["data"]["duplicate"]
    assert own_sandbox.admin.issued_count(imp_uid) == 1
