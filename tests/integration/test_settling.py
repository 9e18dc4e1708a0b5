"""An ambiguous POST is settled by a lookup made no earlier than IAMPORT_SETTLE_SECONDS after it
was sent; a POST i'mport acts on later than that is detected, not silent.

The sandbox acts on a POST with a scripted latency after the delay, whether or not the client
still waits: a request processed after the client gave up, as i'mport may.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.test_observability import scrape, value
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import free_port
from tests.support.worker import producer_app, running_worker, worker_env

pytestmark = pytest.mark.integration

PHONE = "01055554321"


def posts(sandbox: Sandbox, imp_uid: str) -> list[dict[str, Any]]:
    """The POST /receipts requests the sandbox saw for one payment."""
    return [r for r in sandbox.admin.requests(imp_uid) if r["method"] == "POST"]


def issue(own_redis: RedisServer, imp_uid: str, timeout: float) -> dict[str, Any]:
    """Send one issue task as any producer would, and wait for its one event."""
    producer = producer_app(own_redis.url)
    task = producer.send_task(
        "issue_cash_receipt",
        args=[{"imp_uid": imp_uid, "identifier": PHONE}],
        queue="cash_receipts",
    )
    return ResultStream(own_redis.client()).wait(str(task.id), timeout=timeout)


def test_a_post_processed_late_within_the_bound_is_adopted(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """The POST times out at 1 s and is acted on at 1.5 s: the retry looks only at 2 s (the
    bound after the send), finds the receipt and adopts it. One receipt, no second POST.

    With IAMPORT_SETTLE_SECONDS=0 the retry looks at once, finds nothing and POSTs again.
    """
    imp_uid = f"settle_{uuid.uuid4().hex[:8]}"
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 1500, "method": "POST"})
    env = worker_env(own_redis.url, sandbox.url, IAMPORT_TIMEOUT="1", IAMPORT_SETTLE_SECONDS="2")
    with running_worker(env):
        event = issue(own_redis, imp_uid, timeout=30)
    assert event["type"] == "cash_receipt.issued"
    assert event["data"]["duplicate"] is False
    assert len(posts(sandbox, imp_uid)) == 1
    assert sandbox.admin.issued_count(imp_uid) == 1
    lookups = [r for r in sandbox.admin.requests(imp_uid) if r["method"] == "GET"]
    sent_at = posts(sandbox, imp_uid)[0]["at"]
    # The lookup that settled it came no earlier than the bound after the POST arrived.
    assert lookups[-1]["at"] >= sent_at + 2 - 0.05


def test_a_post_processed_beyond_the_bound_is_counted(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """Beyond the bound the guarantee ends, visibly: the first POST is acted on at 4.5 s, after
    the retry's lookup (3 s) found nothing, so the second POST meets "already issued". The
    receipt is adopted and cashreceipt_late_processing_detected_total counts it."""
    imp_uid = f"late_{uuid.uuid4().hex[:8]}"
    sandbox.admin.script(
        imp_uid,
        {"kind": "latency", "ms": 4500, "method": "POST"},
        # The second POST takes 2 s (within the read timeout): i'mport acted on the first by then.
        {"kind": "latency", "ms": 2000, "method": "POST"},
    )
    port = free_port()
    env = worker_env(
        own_redis.url,
        sandbox.url,
        IAMPORT_TIMEOUT="3",
        IAMPORT_SETTLE_SECONDS="3",
        METRICS_PORT=str(port),
        METRICS_ADDRESS="127.0.0.1",
    )
    with running_worker(env):
        event = issue(own_redis, imp_uid, timeout=60)
        samples = scrape(port)
    assert event["type"] == "cash_receipt.issued"
    assert [r["status"] for r in posts(sandbox, imp_uid)][1:] == [400]
    assert sandbox.admin.issued_count(imp_uid) == 1
    detected = "cashreceipt_late_processing_detected_total"
    assert value(samples, detected, provider="iamport", kind="payment") == 1


def test_a_long_bound_parks_the_job_until_the_settling_lookup(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """A bound longer than RETRY_COUNTDOWN_MAX parks the job in the ledger; the sweeper resumes it
    and its first request is the lookup, no earlier than the bound after the POST was sent."""
    imp_uid = f"parked_{uuid.uuid4().hex[:8]}"
    sandbox.admin.script(imp_uid, {"kind": "hang", "seconds": 2, "method": "POST"})
    env = worker_env(
        own_redis.url,
        sandbox.url,
        IAMPORT_TIMEOUT="1",
        IAMPORT_SETTLE_SECONDS="3",
        RETRY_COUNTDOWN_MAX="0.5",
        SWEEP_INTERVAL="0.2",
    )
    with running_worker(env) as output:
        event = issue(own_redis, imp_uid, timeout=30)
        log = output.text
    assert event["type"] == "cash_receipt.issued"
    assert "attempt 1: parked (outcome_unknown)" in log, log
    requests_seen = sandbox.admin.requests(imp_uid)
    first_post = next(r for r in requests_seen if r["method"] == "POST")
    # After the hung POST: the at-once lookup (receipt, payment), then nothing until the bound.
    after = [r for r in requests_seen if r["at"] > first_post["at"]]
    resumed = [r for r in after if r["at"] >= first_post["at"] + 1.5]
    assert resumed[0]["method"] == "GET"
    assert resumed[0]["at"] >= first_post["at"] + 3 - 0.05
    assert sandbox.admin.issued_count(imp_uid) == 1
