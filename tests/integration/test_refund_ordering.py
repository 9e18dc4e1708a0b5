"""Refunds against jobs that are not simply issued: a parked issue, a lost cancellation message.

A Redis per test (``own_redis``), a sandbox of the module's own, and workers
started by each test: a long honoured Retry-After parks the issue in the
ledger (RETRY_BACKOFF_MAX is raised for that), and the sweeper runs often, so
that a lost message is re-sent within seconds (the producer's visibility
timeout is 1 s).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.wait import wait_for
from tests.support.worker import BIN, TEST_PII_KEY, running_worker, worker_env
from worker.adapters.store.keys import DUE_KEY, ledger_key, payment_receipt_key
from worker.adapters.store.ledger import Ledger
from worker.celery.producer import enqueue_cancel, enqueue_issue

pytestmark = pytest.mark.integration
PHONE = "01055554321"


@pytest.fixture(scope="module")
def own_sandbox() -> Iterator[Sandbox]:
    """A sandbox of this module's own."""
    with running_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def env(own_redis: RedisServer, own_sandbox: Sandbox) -> dict[str, str]:
    """Workers that park a long Retry-After in the ledger and sweep every 0.2 s."""
    return worker_env(
        own_redis.url,
        own_sandbox.url,
        RETRY_BACKOFF_MAX="60",
        RETRY_COUNTDOWN_MAX="0.3",
        SWEEP_INTERVAL="0.2",
    )


@pytest.fixture
def producer(own_redis: RedisServer) -> Iterator[Celery]:
    """The helper's app; the sweeper re-sends its recorded jobs 1 s after they were sent."""
    app = Celery("checkout", broker=own_redis.url)
    app.conf.pii_encryption_keys = [TEST_PII_KEY]
    app.conf.broker_visibility_timeout = 1
    yield app
    app.close()


@pytest.fixture
def client(own_redis: RedisServer) -> redis.Redis:
    """The module's Redis, decoded."""
    return own_redis.client()


def parked_issue(
    producer: Celery, sandbox: Sandbox, client: redis.Redis, imp_uid: str, **payment: Any
) -> str:
    """An issue whose POST met a 429 with Retry-After 60: parked in the ledger, no message."""
    sandbox.admin.seed_payment(imp_uid, **payment)
    sandbox.admin.script(imp_uid, {"kind": "rate_limit", "retry_after": 60, "method": "POST"})
    task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)

    def parked() -> bool:
        record = client.hgetall(ledger_key(imp_uid))
        return record.get("state") == "received" and int(record.get("attempts", 0)) == 1

    wait_for(parked, timeout=20, message="the issue to park in the ledger")
    return task_id


def test_full_refund_of_a_parked_issue_ends_it(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """The cancellation takes the parked job over: no receipt, the issue ends as cancelled."""
    results = ResultStream(client)
    with running_worker(env):
        issue_task = parked_issue(producer, own_sandbox, client, imp_uid)
        cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
        assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
        stale = results.wait(issue_task)
        assert (stale["type"], stale["data"]["error"]["reason"]) == (
            "cash_receipt.failed",
            "cancelled",
        )
    assert client.hget(ledger_key(imp_uid), "state") == "cancelled"
    assert (
        client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is None
    )  # nothing left for the sweeper to resume
    assert own_sandbox.admin.issued_count(imp_uid) == 0


def test_a_refund_that_takes_over_a_parked_issue_has_a_budget_of_its_own(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """The issue spent one of its two attempts before it parked; the refund that takes the
    job over starts its own count, so its lookup's one 502 is retried, not its last."""
    results = ResultStream(client)
    with running_worker({**env, "RETRY_MAX_ATTEMPTS": "2", "RETRY_BACKOFF_BASE": "0.1"}):
        issue_task = parked_issue(producer, own_sandbox, client, imp_uid)
        own_sandbox.admin.script(imp_uid, {"kind": "garbage", "status": 502, "method": "GET"})
        cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
        assert cancelled["type"] == "cash_receipt.cancelled", cancelled
        assert cancelled["data"]["attempts"] == 2
        stale = results.wait(issue_task)
        assert stale["data"]["error"]["reason"] == "cancelled"
    assert own_sandbox.admin.issued_count(imp_uid) == 0


def test_partial_refund_of_a_parked_issue_issues_for_the_balance(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """The cancellation issues the parked job's receipt, for what is left; the issue reports it."""
    results = ResultStream(client)
    with running_worker(env):
        issue_task = parked_issue(producer, own_sandbox, client, imp_uid, amount=33000)
        own_sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)
        cancel_task = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
        wait_for(lambda: len(results.for_task(cancel_task)) == 2, message="both refund events")
        cancelled, issued = sorted(results.for_task(cancel_task), key=lambda e: e["id"])
        assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
        assert (issued["type"], issued["data"]["receipt"]["amount"]) == (
            "cash_receipt.issued",
            22000,
        )
        waiter = results.wait(issue_task)
        assert (waiter["type"], waiter["data"]["duplicate"]) == ("cash_receipt.issued", True)
        assert waiter["data"]["receipt"] == issued["data"]["receipt"]
    assert own_sandbox.admin.issued_count(imp_uid) == 1


def test_lost_cancellation_message_is_listed_stuck_and_resent(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """The broker loses the cancellation (no worker yet, its list deleted): the sweeper re-sends it.

    Meanwhile ``cashreceipt stuck`` lists the job; the receipt ends cancelled, once.
    """
    results = ResultStream(client)
    with running_worker(env):
        issued = results.wait(
            enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
        )
    task_id = enqueue_cancel({"imp_uid": imp_uid}, app=producer)
    assert client.delete("cash_receipts") == 1  # the message is gone: only the ledger knows

    def listed() -> list[dict[str, Any]]:
        stuck = subprocess.run(
            [str(BIN / "cashreceipt"), "stuck", "--older-than", "0", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        shown = [json.loads(line) for line in stuck.stdout.splitlines() if line.strip()]
        return [job for job in shown if job["imp_uid"] == imp_uid]

    (job,) = wait_for(listed, timeout=20, interval=0.5, message="the cancellation to be due")
    assert (job["state"], job["op"], job["task_id"]) == ("received", "cancel", task_id)

    with running_worker(env):
        cancelled = results.wait(task_id, timeout=30)
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["receipt"]["apply_num"] == issued["data"]["receipt"]["apply_num"]
    assert client.hget(ledger_key(imp_uid), "state") == "cancelled"
    assert [r["method"] for r in own_sandbox.admin.requests(imp_uid)].count("DELETE") == 1


def recorded_only(client: redis.Redis, imp_uid: str, cancel: dict[str, Any]) -> str:
    """A cancellation recorded in the ledger whose message the broker then lost: only the
    ledger knows of it (the producer records before it sends)."""
    ledger = Ledger(
        client,
        stream="cash_receipt.events",
        event_retention_seconds=3600,
        retention_seconds=3600,
        lease_seconds=60,
    )
    task_id = str(uuid.uuid4())
    ledger.receive_cancel(imp_uid, task_id=task_id, cancel=cancel, resend_after=1)
    return task_id


def test_a_refund_recorded_behind_an_issue_that_fails_still_runs(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """Issue 14, finding 17: the refund, recorded while the issue waited, owns the job when
    the issue fails for good; the sweeper re-sends its lost message, and it ends in its event."""
    results = ResultStream(client)
    own_sandbox.admin.seed_payment(imp_uid)
    own_sandbox.admin.script(imp_uid, *[{"kind": "reject", "method": "POST"}] * 3)
    issue_task = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
    refund_task = recorded_only(client, imp_uid, {"imp_uid": imp_uid})
    with running_worker(env):
        failed = results.wait(issue_task)
        assert (failed["type"], failed["data"]["error"]["reason"]) == (
            "cash_receipt.failed",
            "rejected",
        )
        cancelled = results.wait(refund_task, timeout=30)
    assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
    assert client.hget(ledger_key(imp_uid), "state") == "cancelled"
    assert own_sandbox.admin.issued_count(imp_uid) == 0


def test_a_confirmation_recorded_behind_a_failed_reissue_still_issues(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """Issue 14, finding 17: a confirmation recorded while a partial refund ran owns the job
    when the refund's re-issue fails for good, and issues the balance."""
    results = ResultStream(client)
    with running_worker(env):
        own_sandbox.admin.seed_payment(imp_uid, amount=33000)
        results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer))
    own_sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)
    own_sandbox.admin.script(imp_uid, *[{"kind": "reject", "method": "POST"}] * 3)
    refund_task = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
    # The confirmation comes again while the refund waits in the queue (its job received).
    issue_task = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
    with running_worker(env):
        wait_for(lambda: len(results.for_task(refund_task)) == 2, message="the refund's events")
        refund = sorted(results.for_task(refund_task), key=lambda e: e["id"])
        assert [e["type"] for e in refund] == ["cash_receipt.cancelled", "cash_receipt.failed"]
        issued = results.wait(issue_task, timeout=30)
    assert (issued["type"], issued["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert issued["data"]["receipt"]["amount"] == 22000
    assert own_sandbox.admin.issued_count(imp_uid) == 2


def test_a_parked_refund_taken_over_by_another_ends_in_one_event(
    env: dict[str, str],
    producer: Celery,
    own_sandbox: Sandbox,
    client: redis.Redis,
    imp_uid: str,
) -> None:
    """Issue 14, finding 12: the first refund's DELETE meets a long Retry-After and parks;
    a second refund takes the job over and cancels. The first, whose message is gone
    (parked), ends with the second's outcome, as a duplicate, once."""
    results = ResultStream(client)
    with running_worker(env):
        own_sandbox.admin.seed_payment(imp_uid)
        issued = results.wait(
            enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
        )
        own_sandbox.admin.script(
            imp_uid, {"kind": "rate_limit", "retry_after": 60, "method": "DELETE"}
        )
        first = enqueue_cancel({"imp_uid": imp_uid}, app=producer)

        def parked() -> bool:
            record = client.hgetall(ledger_key(imp_uid))
            return record.get("state") == "received" and record.get("task_id") == first

        wait_for(parked, timeout=20, message="the first refund to park in the ledger")
        second = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
        assert (second["type"], second["data"]["duplicate"]) == ("cash_receipt.cancelled", False)
        earlier = results.wait(first, timeout=10)
    assert (earlier["type"], earlier["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert earlier["data"]["receipt"]["apply_num"] == issued["data"]["receipt"]["apply_num"]
    assert len(results.for_task(first)) == 1
    assert client.hget(ledger_key(imp_uid), "state") == "cancelled"
