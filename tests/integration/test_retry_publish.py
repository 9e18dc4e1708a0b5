"""A retry that cannot be published leaves its message with the broker, never acked.

Celery's ``Task.retry`` turns a retry it cannot publish into
``Reject(requeue=False)``, and rejecting without requeue is an ack: when the
broker takes the ack but refused the publish (a broker back up a moment
later), the message is gone and its task message never ends in an event. Here
the private Redis of a real worker runs out of memory while the task waits on
i'mport: recording the answer fails, publishing the retry fails, and putting
the message back on the queue fails too. The message must stay unacked, with a
worker still running to restore it once the visibility timeout has passed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

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
from tests.support.wait import WaitTimeout, wait_for
from tests.support.worker import ProcessOutput, running_worker, worker_env
from worker.celery.producer import enqueue_issue
from worker.config.timing import (
    VISIBILITY_MARGIN_SECONDS,
    longest_attempt_seconds,
    minimum_visibility_timeout,
    unacked_restore_interval,
)

pytestmark = pytest.mark.integration

#: What worker/celery/transport.py logs when Redis refuses to put a message back on the queue.
REQUEUE_REFUSED = "could not go back to the queue"
#: Lines after which the refused requeue will not come: the answer was recorded, or
#: the worker stopped.
GONE_ON = ("issued after", "Unrecoverable error")


@contextmanager
def worker_output_on_timeout(output: ProcessOutput) -> Iterator[None]:
    """A wait that times out says what the worker printed, so the failure can be read."""
    try:
        yield
    except WaitTimeout as timed_out:
        raise AssertionError(f"{timed_out}; the worker's output:\n{output.text}") from None


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
        # While i'mport holds the POST, Redis fills up: writes are refused, deletes are not
        # (nor any command inside MULTI). It stays full until the worker has tried to put
        # the message back on the queue, so that is refused too.
        admin.config_set("maxmemory", 1)
        try:
            with worker_output_on_timeout(output):
                wait_for(
                    lambda: any(line in output.text for line in (REQUEUE_REFUSED, *GONE_ON)),
                    timeout=20,
                    message="the task's message to fail to go back to the queue",
                )
        finally:
            admin.config_set("maxmemory", 0)
        assert "could not publish its retry" in output.text, output.text
        # Before, the refused requeue's error reached Celery's event loop and stopped the
        # worker: nothing was left to restore the message.
        assert "Unrecoverable error" not in output.text, output.text
        assert REQUEUE_REFUSED in output.text, output.text
        # The message is still in kombu's unacked hash: the worker's scan restores it once
        # the visibility timeout has passed since it was fetched, within one scan interval.
        # By then the job's lease has passed too (the visibility timeout covers the lease
        # and the longest countdown), so the copy takes the job over and makes one attempt,
        # lookup first, bounded by the client's timeouts; then the margin the settings
        # keep for Redis round trips, publishing and scheduling.
        settings = {
            "iamport_timeout": float(env["IAMPORT_TIMEOUT"]),
            "longest_countdown": min(
                float(env["RETRY_BACKOFF_MAX"]), float(env["RETRY_COUNTDOWN_MAX"])
            ),
            "duplicate_wait": float(env["DUPLICATE_WAIT"]),
            "settle_seconds": float(env["IAMPORT_SETTLE_SECONDS"]),
        }
        visibility = minimum_visibility_timeout(**settings)
        bound = (
            visibility
            + unacked_restore_interval(visibility)
            + longest_attempt_seconds(settings["iamport_timeout"])
            + VISIBILITY_MARGIN_SECONDS
        )
        with worker_output_on_timeout(output):
            event = ResultStream(own_redis.client()).wait(task_id, timeout=bound)
        assert event["type"] == "cash_receipt.issued"
        assert not event["data"]["duplicate"]
        assert output.alive, output.text
    assert own_sandbox.admin.issued_count(imp_uid) == 1
