"""Refunds: the receipt is cancelled, re-issued for the balance after a partial refund, once."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from worker.adapters.store.keys import ledger_key
from worker.adapters.store.views import job_history
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.config import timing

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]
PHONE = "01055554321"


def issue(producer: Celery, results: ResultStream, imp_uid: str) -> dict[str, Any]:
    """Issue a receipt through the helper and wait for it."""
    event = results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer))
    assert event["type"] == "cash_receipt.issued"
    return event


def receipt_at_iamport(sandbox: Sandbox, imp_uid: str) -> dict[str, Any]:
    """What GET /receipts answers now."""
    answer = requests.get(
        f"{sandbox.url}/receipts/{imp_uid}",
        headers={"Authorization": f"Bearer {sandbox.get_token()}"},
        timeout=5,
    )
    response: dict[str, Any] = answer.json()["response"]
    return response


def test_full_refund_cancels_and_stale_issue_never_reissues(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """DELETE, a cancelled event, the ledger cancelled; a late issue message issues nothing."""
    issued = issue(producer, results, imp_uid)
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["duplicate"] is False
    receipt = cancelled["data"]["receipt"]
    assert receipt["apply_num"] == issued["data"]["receipt"]["apply_num"]
    assert receipt["cancelled_at"] > 0
    assert receipt_at_iamport(sandbox, imp_uid)["cancelled_at"] > 0
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "cancelled"

    stale = results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer))
    assert stale["type"] == "cash_receipt.failed"
    assert stale["data"]["error"]["reason"] == "cancelled"
    again = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert sandbox.admin.issued_count(imp_uid) == 1
    assert [r["method"] for r in sandbox.admin.requests(imp_uid)].count("DELETE") == 1


def test_a_message_after_a_full_refund_ends_at_the_producer(
    producer: Celery, results: ResultStream, imp_uid: str
) -> None:
    """A confirmation or a refund that comes after a full refund: the ledger records
    neither, so nothing would re-send a lost message, and the producer publishes the
    task's event before it returns (no message, no attempt), as the worker would have."""
    issue(producer, results, imp_uid)
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    receipt = cancelled["data"]["receipt"]

    late = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
    [stale] = results.for_task(late)  # already there when enqueue_issue returned
    assert (stale["type"], stale["data"]["duplicate"]) == ("cash_receipt.failed", True)
    assert (stale["data"]["error"]["reason"], stale["data"]["attempts"]) == ("cancelled", 0)

    repeated = enqueue_cancel({"imp_uid": imp_uid}, app=producer)
    [again] = results.for_task(repeated)
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert (again["data"]["receipt"], again["data"]["attempts"]) == (receipt, 0)


def test_partial_refund_reissues_for_the_balance(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """Cancel and re-issue in one transition: both events; i'mport computes the new amount."""
    sandbox.admin.seed_payment(imp_uid, amount=33000)
    first = issue(producer, results, imp_uid)
    assert first["data"]["receipt"]["amount"] == 33000
    sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)  # the refund happened at i'mport
    task_id = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
    wait_for(lambda: len(results.for_task(task_id)) == 2, message="both events of the refund")
    cancelled, reissued = sorted(results.for_task(task_id), key=lambda e: e["id"])
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["receipt"]["apply_num"] == first["data"]["receipt"]["apply_num"]
    assert reissued["type"] == "cash_receipt.issued"
    assert reissued["data"]["receipt"]["amount"] == 22000
    assert (
        receipt_at_iamport(sandbox, imp_uid)["apply_num"]
        == reissued["data"]["receipt"]["apply_num"]
    )
    assert sandbox.admin.issued_count(imp_uid) == 2
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "issued"
    # The history names the re-issue, so receipts can be counted against it (the chaos suite).
    latest = job_history(redis_server.client(), imp_uid)[0]
    assert (latest["op"], latest["outcome"], latest["then"]) == (
        "cancel",
        "cash_receipt.cancelled",
        "cash_receipt.issued",
    )


def test_cancellation_during_issuance_leaves_no_live_receipt(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """A cancel that arrives while the POST is in flight waits for it, then cancels."""
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 800, "method": "POST"})
    issued_task = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
    wait_for(lambda: sandbox.admin.requests(imp_uid) or None, message="the POST to start")
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert results.wait(issued_task)["type"] == "cash_receipt.issued"
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert receipt_at_iamport(sandbox, imp_uid)["cancelled_at"] > 0


def test_lost_delete_answer_is_settled_by_lookup(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """The DELETE went through but its answer was lost: the lookup sees it; no second DELETE."""
    issue(producer, results, imp_uid)
    sandbox.admin.script(imp_uid, {"kind": "drop_after", "method": "DELETE"})
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["receipt"]["cancelled_at"] > 0
    assert [r["method"] for r in sandbox.admin.requests(imp_uid)].count("DELETE") == 1


def test_pg_without_cancel_support_is_a_final_cancel_failure(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """KICC receipts cannot be cancelled through i'mport: cancel_failed; the job stays issued."""
    sandbox.admin.seed_payment(imp_uid, pg_provider="kicc")
    event = results.wait(
        enqueue_issue(
            {"imp_uid": imp_uid, "identifier": PHONE, "identifier_type": "phone"}, app=producer
        )
    )
    assert event["type"] == "cash_receipt.issued"
    failed = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert failed["type"] == "cash_receipt.cancel_failed"
    assert (failed["data"]["error"]["reason"], failed["data"]["error"]["status"]) == (
        "unsupported_pg",
        501,
    )
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "issued"


def test_malformed_cancellation_fails_at_once(producer: Celery, results: ResultStream) -> None:
    """A cancellation without an imp_uid ends in one cancel_failed event, invalid_payload."""
    task_id = str(
        producer.send_task("cancel_cash_receipt", args=[{"amount": -5}], queue="cash_receipts").id
    )
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.cancel_failed"
    assert set(event["data"]["error"]["fields"]) == {"imp_uid", "amount"}


def refund_twice(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str, **payment: Any
) -> dict[str, Any]:
    """Issue for 33000, refund 11000, then send the same refund again: it must be a
    duplicate, with one DELETE and two receipts in all. Returns the re-issue's event."""
    sandbox.admin.seed_payment(imp_uid, amount=33000, **payment)
    order = {"imp_uid": imp_uid, "identifier": PHONE, "identifier_type": "phone"}
    assert results.wait(enqueue_issue(order, app=producer))["type"] == "cash_receipt.issued"
    sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)
    refund = {"imp_uid": imp_uid, "amount": 11000}
    _, reissued = results.wait_many(enqueue_cancel(refund, app=producer), 2)
    assert reissued["data"]["receipt"]["amount"] == 22000

    again = results.wait(enqueue_cancel(refund, app=producer))
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    methods = [r["method"] for r in sandbox.admin.requests(imp_uid)]
    assert (methods.count("DELETE"), methods.count("POST")) == (1, 2)
    assert sandbox.admin.issued_count(imp_uid) == 2
    return reissued


def test_repeated_partial_refund_is_a_duplicate(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """The same refund sent twice (an outbox relay repeating): no DELETE, no third receipt.

    A further refund still cancels and re-issues: the live receipt no longer covers the balance.
    """
    reissued = refund_twice(producer, sandbox, results, imp_uid)
    live = receipt_at_iamport(sandbox, imp_uid)
    assert live["apply_num"] == reissued["data"]["receipt"]["apply_num"]
    assert live["cancelled_at"] == 0
    record = redis_server.client().hgetall(ledger_key(imp_uid))
    assert record["state"] == "issued"
    assert json.loads(record["receipt"])["apply_num"] == live["apply_num"]

    sandbox.admin.seed_payment(imp_uid, cancel_amount=16000)  # a second, different refund
    cancelled, third = results.wait_many(
        enqueue_cancel({"imp_uid": imp_uid, "amount": 5000}, app=producer), 2
    )
    assert cancelled["data"]["receipt"]["apply_num"] == live["apply_num"]
    assert (third["type"], third["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 17000)
    assert sandbox.admin.issued_count(imp_uid) == 3


def test_partial_refund_before_confirmation_leaves_the_issue_to_go_ahead(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """Nothing to cancel yet: the later confirmation issues for what is left, i'mport's sum."""
    sandbox.admin.seed_payment(imp_uid, amount=33000, cancel_amount=11000)
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer))
    assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "cancelled"

    issued = issue(producer, results, imp_uid)
    assert (issued["data"]["duplicate"], issued["data"]["receipt"]["amount"]) == (False, 22000)
    assert sandbox.admin.issued_count(imp_uid) == 1
    again = results.wait(enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer))
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert sandbox.admin.issued_count(imp_uid) == 1


def test_full_refund_before_confirmation_refuses_the_issue(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """A payment refunded in full never gets a receipt, however late its confirmation comes."""
    cancelled = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
    late = results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer))
    assert (late["type"], late["data"]["error"]["reason"]) == ("cash_receipt.failed", "cancelled")
    assert sandbox.admin.issued_count(imp_uid) == 0


def test_confirmation_during_a_partial_refund_issues_after_it(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """The issue waits for the refund in hand (nothing to cancel yet), then issues the balance."""
    sandbox.admin.seed_payment(imp_uid, amount=33000, cancel_amount=11000)
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 1500, "method": "GET"})
    cancel_task = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
    wait_for(lambda: sandbox.admin.requests(imp_uid) or None, message="the refund's lookup")
    issue_task = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
    cancelled = results.wait(cancel_task)
    assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
    issued = results.wait(issue_task, timeout=40)
    assert (issued["type"], issued["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert issued["data"]["receipt"]["amount"] == 22000
    assert sandbox.admin.issued_count(imp_uid) == 1


def test_a_refund_failed_for_good_before_any_receipt_leaves_the_confirmation_to_issue(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    imp_uid: str,
) -> None:
    """Issue 14, finding 10: the job, which has no receipt, is not recorded issued."""
    # i'mport fails the refund's look-up (500) every time: a failure, no receipt yet.
    sandbox.admin.script(imp_uid, *[{"kind": "status", "status": 500, "method": "GET"}] * 40)
    failed = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer), timeout=60)
    assert failed["type"] == "cash_receipt.cancel_failed"
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "failed"
    sandbox.admin.clear_faults()
    issued = results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer))
    assert (issued["type"], issued["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert issued["data"]["receipt"]["apply_num"]
    assert sandbox.admin.issued_count(imp_uid) == 1


def test_repeated_partial_refund_without_a_receipt_lookup_is_a_duplicate(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """Issue 14, finding 15: Settlebank's receipts cannot be looked up; the job's recorded
    receipt (the re-issue's answer) tells the repeat apart: no DELETE, no third receipt."""
    refund_twice(producer, sandbox, results, imp_uid, pg_provider="settle")


@pytest.mark.parametrize("lookup", [True, False], ids=["lookup", "no-lookup-pg"])
def test_no_refund_attempt_makes_more_requests_than_the_time_rule_counts(
    producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str, lookup: bool
) -> None:
    """Issue 14, finding 16: a partial refund's attempt had made seven calls (nine with no
    receipt lookup), each up to four HTTP requests, where the time rule counts on five:
    its lease could pass mid-attempt. Counted at the sandbox, per attempt of the refund."""
    sandbox.admin.seed_payment(
        imp_uid, amount=33000, **({} if lookup else {"pg_provider": "settle"})
    )
    payload = {"imp_uid": imp_uid, "identifier": PHONE, "identifier_type": "phone"}
    assert results.wait(enqueue_issue(payload, app=producer))["type"] == "cash_receipt.issued"
    before = len(sandbox.admin.requests(imp_uid))
    sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)
    task_id = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
    wait_for(lambda: len(results.for_task(task_id)) == 2, message="both events of the refund")
    attempts = max(event["data"]["attempts"] for event in results.for_task(task_id))
    made = len(sandbox.admin.requests(imp_uid)) - before
    assert made <= attempts * timing.MAX_PROVIDER_CALLS_PER_ATTEMPT, (made, attempts)
    assert sandbox.admin.issued_count(imp_uid) == 2
