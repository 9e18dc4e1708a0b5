"""Defects the sandbox's oracle showed (docs/sandbox.md, "Duplicates and blind requests"),
each reproduced on its own: a strict xfail naming the defect while it is not fixed.

Strict, so that the fix turns the test into an unexpected pass: then the marker goes and the
test stays as the fix's regression test. Never a skip.
"""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, wait_posts_processed
from tests.support.worker import producer_app, running_worker, worker_env
from worker.celery.producer import enqueue_issue

pytestmark = [pytest.mark.integration]

#: The worker's read timeout, and how late the sandbox processes the first POST: well past the
#: timeout, so the retry's lookup and POST come first, and well inside the settle bound
#: (IAMPORT_SETTLE_SECONDS, issue 12 item 3) a worker that honours it waits before looking.
TIMEOUT = 0.25
LATE_POST_MS = 4000
SETTLE_SECONDS = 6


# Fixed by IAMPORT_SETTLE_SECONDS (issue 12 item 3): the retry's lookup waits out the bound
# after the first POST was sent. Its strict xfail went; the test stays as the fix's regression.
def test_a_post_processed_late_is_not_a_second_receipt(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """The first POST times out and is processed seconds later; the job issues once."""
    honest_sandbox.script(imp_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"})
    env = worker_env(
        own_redis.url,
        honest_sandbox.url,
        IAMPORT_TIMEOUT=str(TIMEOUT),
        IAMPORT_SETTLE_SECONDS=str(SETTLE_SECONDS),
        RETRY_MAX_ATTEMPTS="20",
    )
    producer = producer_app(own_redis.url)
    with running_worker(env):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        event = ResultStream(own_redis.client()).wait(task_id, timeout=30)
        assert event["type"] == "cash_receipt.issued"
        wait_posts_processed(honest_sandbox, imp_uid, timeout=LATE_POST_MS / 1000 + 5)
    producer.close()
    audit = honest_sandbox.audit()
    assert audit["double_active"] == []
    assert audit["payments"][imp_uid]["created"] == 1
    assert audit["blind_posts"] == 0
