"""Refunds of V1 external receipts (issue 15), through a real worker and the sandbox.

An external receipt has no payment behind it: a refund names its ``merchant_uid``, and a
partial one what is left (``remaining_amount``). The worker cancels with DELETE, then
issues the balance under the same merchant_uid. Whether i'mport issues again on a
merchant_uid whose receipt was cancelled is unconfirmed; the sandbox answers both ways
(``external_reissue``). A refund whose balance the live receipt already covers (the same
refund again, or an earlier one arriving late) is a duplicate: no DELETE, no POST.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from tests.support.commands import run_cashreceipt
from tests.support.payloads import PHONE, external_payload
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.worker import worker_env
from worker.adapters.store.keys import DEAD_JOBS_KEY
from worker.celery.producer import enqueue_cancel, enqueue_issue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]


@pytest.fixture
def reissue_allowed(sandbox: Sandbox) -> Iterator[None]:
    """The sandbox issues again on a merchant_uid whose receipt was cancelled."""
    sandbox.admin.set_external_reissue("allow")
    try:
        yield
    finally:
        sandbox.admin.set_external_reissue("refuse")


def requests_of(sandbox: Sandbox, merchant_uid: str) -> list[str]:
    """The POSTs and DELETEs the sandbox saw for the merchant_uid, in order."""
    return [
        r["method"]
        for r in sandbox.admin.external_requests(merchant_uid)
        if r["method"] in {"POST", "DELETE"}
    ]


def last_post(sandbox: Sandbox, merchant_uid: str) -> dict[str, Any]:
    """The body of the last POST the sandbox saw for the merchant_uid."""
    found = [r for r in sandbox.admin.external_requests(merchant_uid) if r["method"] == "POST"]
    body: dict[str, Any] = found[-1]["body"]
    return body


def refund(merchant_uid: str, **fields: Any) -> dict[str, Any]:
    return {"kind": "external", "merchant_uid": merchant_uid, **fields}


def issued(producer: Celery, results: ResultStream, merchant_uid: str, **fields: Any) -> None:
    event = results.wait(enqueue_issue(external_payload(merchant_uid, **fields), app=producer))
    assert event["type"] == "cash_receipt.issued"


@pytest.mark.usefixtures("reissue_allowed")
def test_a_partial_refund_cancels_then_issues_the_balance_under_the_same_id(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    issued(producer, results, merchant_uid, tax_free=3000)
    task_id = enqueue_cancel(
        refund(
            merchant_uid,
            amount=13000,
            remaining_amount=20000,
            remaining_tax_free=1000,
            refund_id="refund-1",
        ),
        app=producer,
    )
    cancelled, reissued = results.wait_many(task_id, 2)
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["receipt"]["amount"] == 33000
    assert cancelled["data"]["receipt"]["imp_uid"] is None
    assert cancelled["data"]["receipt_key"] == f"iamport-external:{merchant_uid}"
    assert (cancelled["data"]["kind"], cancelled["data"]["merchant_uid"]) == (
        "external",
        merchant_uid,
    )
    assert reissued["type"] == "cash_receipt.issued"
    assert reissued["data"]["receipt"]["amount"] == 20000
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]
    balance = last_post(sandbox, merchant_uid)
    assert (balance["amount"], balance["tax_free"]) == (20000, 1000)
    assert "vat_amount" not in balance
    assert PHONE not in str(results.all())

    # The sale confirmed again is this job's, though its receipt is now for the balance;
    # another amount under the merchant_uid is still another sale's.
    again = results.wait(enqueue_issue(external_payload(merchant_uid, tax_free=3000), app=producer))
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.issued", True)
    assert again["data"]["receipt"]["amount"] == 20000
    other = results.wait(enqueue_issue(external_payload(merchant_uid, amount=5000), app=producer))
    assert other["data"]["error"]["reason"] == "id_conflict"
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_repeated_or_stale_refund_is_a_duplicate_with_nothing_sent(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """Refund 2 (to 15000), then refund 1 (to 20000) arriving late, then refund 2 again
    under another task: both late ones are duplicates; only refund 2 sent anything."""
    issued(producer, results, merchant_uid)
    second = enqueue_cancel(refund(merchant_uid, remaining_amount=15000), app=producer)
    assert [e["type"] for e in results.wait_many(second, 2)] == [
        "cash_receipt.cancelled",
        "cash_receipt.issued",
    ]
    for late in (
        refund(merchant_uid, remaining_amount=20000),
        refund(merchant_uid, remaining_amount=15000),
    ):
        [event] = results.wait_many(enqueue_cancel(late, app=producer), 1)
        assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]


@pytest.mark.usefixtures("reissue_allowed")
def test_one_refund_id_sent_twice_is_one_task(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    issued(producer, results, merchant_uid)
    message = refund(merchant_uid, remaining_amount=20000, refund_id="refund-7")
    first = enqueue_cancel(message, app=producer)
    assert len(results.wait_many(first, 2)) == 2
    assert enqueue_cancel(message, app=producer) == first
    other = enqueue_cancel(refund(f"{merchant_uid}-x", refund_id="refund-7"), app=producer)
    assert other != first
    assert len(results.for_task(first)) == 2
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]


def test_a_refused_reissue_ends_cancelled_and_one_failure_dead_lettered(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """i'mport refuses a new receipt on the merchant_uid (the sandbox's default): the
    receipt is cancelled, and the balance fails once, ``id_taken``, replayable."""
    issued(producer, results, merchant_uid)
    task_id = enqueue_cancel(refund(merchant_uid, remaining_amount=20000), app=producer)
    cancelled, failed = results.wait_many(task_id, 2)
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert failed["type"] == "cash_receipt.failed"
    assert failed["data"]["error"]["reason"] == "id_taken"
    assert "--new-id" in failed["data"]["error"]["message"]
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]
    assert sandbox.admin.external_issued_count(merchant_uid) == 1
    dead = redis_server.client().zscore(DEAD_JOBS_KEY, f"iamport-external:{merchant_uid}")
    assert dead is not None


def test_a_full_refund_cancels_and_issues_nothing(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    issued(producer, results, merchant_uid)
    [event] = results.wait_many(enqueue_cancel(refund(merchant_uid), app=producer), 1)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.cancelled", False)
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE"]
    again = enqueue_cancel(refund(merchant_uid, remaining_amount=0), app=producer)
    [event] = results.wait_many(again, 1)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE"]


def test_a_mixed_tax_sale_must_say_what_is_left_tax_free(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """The balance of a sale with a tax-free part needs ``remaining_tax_free``: without it
    the refund fails before anything is cancelled; the receipt stays live."""
    issued(producer, results, merchant_uid, tax_free=3000)
    task_id = enqueue_cancel(refund(merchant_uid, remaining_amount=20000), app=producer)
    [event] = results.wait_many(task_id, 1)
    assert event["type"] == "cash_receipt.cancel_failed"
    assert event["data"]["error"]["reason"] == "invalid_payload"
    assert "remaining_tax_free" in str(event["data"]["error"])
    assert requests_of(sandbox, merchant_uid) == ["POST"]


def test_replay_issues_the_refused_balance_under_a_derived_id(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """After ``id_taken``, a plain replay sends the balance (never the sale's total) and
    meets the same refusal; ``replay --new-id`` issues it once under <merchant_uid>-r1,
    the same job however often it is run, and the old job leaves the dead letters."""
    issued(producer, results, merchant_uid, tax_free=3000)
    refunded = refund(merchant_uid, remaining_amount=20000, remaining_tax_free=1000)
    assert len(results.wait_many(enqueue_cancel(refunded, app=producer), 2)) == 2
    env = worker_env(redis_server.url, sandbox.url)
    key = f"iamport-external:{merchant_uid}"

    plain = run_cashreceipt(env, "replay", key)
    assert plain.returncode == 0, plain.stderr
    [again] = results.wait_many(plain.stdout.split()[-1], 1)
    assert again["data"]["error"]["reason"] == "id_taken"
    balance = last_post(sandbox, merchant_uid)
    assert (balance["amount"], balance["tax_free"]) == (20000, 1000)

    derived = f"{merchant_uid}-r1"
    for duplicate in (False, True):  # run twice: the same job, issued once
        replayed = run_cashreceipt(env, "replay", "--json", "--new-id", key)
        assert replayed.returncode == 0, replayed.stderr
        [line] = [json.loads(text) for text in replayed.stdout.splitlines()]
        assert line["issued_as"] == f"iamport-external:{derived}"
        event = results.wait(line["task_id"])
        assert (event["type"], event["data"]["merchant_uid"]) == ("cash_receipt.issued", derived)
        assert (event["data"]["receipt"]["amount"], event["data"]["duplicate"]) == (
            20000,
            duplicate,
        )
    assert sandbox.admin.external_issued_count(derived) == 1
    assert redis_server.client().zscore(DEAD_JOBS_KEY, key) is None
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST", "POST"]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_confirmation_after_a_partial_refund_issues_the_balance(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """The refund came first (events out of order): nothing to cancel yet, and the
    confirmation that follows issues what the refund left, not the sale's total."""
    first = enqueue_cancel(refund(merchant_uid, remaining_amount=20000), app=producer)
    [cancelled] = results.wait_many(first, 1)
    assert (cancelled["type"], cancelled["data"]["receipt"]) == ("cash_receipt.cancelled", None)
    event = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert (event["type"], event["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)
    assert last_post(sandbox, merchant_uid)["amount"] == 20000
    assert requests_of(sandbox, merchant_uid) == ["POST"]


@pytest.mark.parametrize("late", [20000, 10000], ids=["stale", "repeated"])
def test_a_stale_or_repeated_refund_after_a_refused_reissue_sends_nothing(
    late: int,
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """Review finding F1: with no live receipt (i'mport refused the balance), refund 1 late
    or refund 2 again is still a duplicate: no POST, no second id_taken, the dead letter
    kept, and the balance a replay would issue stays refund 2's."""
    issued(producer, results, merchant_uid)
    second = enqueue_cancel(refund(merchant_uid, remaining_amount=10000), app=producer)
    assert [e["type"] for e in results.wait_many(second, 2)] == [
        "cash_receipt.cancelled",
        "cash_receipt.failed",
    ]
    again = enqueue_cancel(refund(merchant_uid, remaining_amount=late), app=producer)
    [event] = results.wait_many(again, 1)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert requests_of(sandbox, merchant_uid) == ["POST", "DELETE", "POST"]
    key = f"iamport-external:{merchant_uid}"
    assert redis_server.client().zscore(DEAD_JOBS_KEY, key) is not None
    env = worker_env(redis_server.url, sandbox.url)
    replayed = run_cashreceipt(env, "replay", "--json", "--new-id", key)
    [line] = [json.loads(text) for text in replayed.stdout.splitlines()]
    assert results.wait(line["task_id"])["data"]["receipt"]["amount"] == 10000


@pytest.mark.usefixtures("reissue_allowed")
def test_refunds_before_the_confirmation_leave_the_smallest_balance(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """Review finding F2: refund 1 then refund 2 (or refund 2 then refund 1, late), both
    before the confirmation: the sale is issued for what is left after both."""
    for remaining in (20000, 10000, 20000):
        results.wait_many(
            enqueue_cancel(refund(merchant_uid, remaining_amount=remaining), app=producer),
            1,
        )
    event = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert (event["type"], event["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 10000)
    assert last_post(sandbox, merchant_uid)["amount"] == 10000


@pytest.mark.usefixtures("reissue_allowed")
def test_another_sale_under_the_id_never_takes_a_refunded_sales_balance(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """Review finding F4: the balance's re-issue failed (the PG refused it); a confirmation
    of another sale under the same merchant_uid (another total, another buyer) is
    id_conflict, and sends nothing; the first sale's own confirmation issues the balance."""
    issued(producer, results, merchant_uid)
    sandbox.admin.script_external(merchant_uid, {"kind": "reject", "method": "POST"})
    sandbox.admin.script_external(merchant_uid, {"kind": "reject", "method": "POST"})
    sandbox.admin.script_external(merchant_uid, {"kind": "reject", "method": "POST"})
    task_id = enqueue_cancel(refund(merchant_uid, remaining_amount=20000), app=producer)
    failed = results.wait_many(task_id, 2)[1]
    assert failed["data"]["error"]["reason"] == "rejected"
    posted = len(requests_of(sandbox, merchant_uid))
    other = external_payload(merchant_uid, amount=44000, identifier="01033334444")
    event = results.wait(enqueue_issue(other, app=producer))
    assert event["data"]["error"]["reason"] == "id_conflict"
    assert len(requests_of(sandbox, merchant_uid)) == posted
    same = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert (same["type"], same["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)


def test_new_id_only_for_a_spent_id_that_fits_and_is_no_order_of_the_merchants(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """Review findings F3, F5 and F6: --new-id is refused (nothing sent) for a failure that
    is not id_taken (its receipt may exist), for a derived id past 100 characters, and for
    a derived id the ledger holds as the merchant's own order."""
    env = worker_env(redis_server.url, sandbox.url)

    def new_id(job: str) -> dict[str, Any]:
        replayed = run_cashreceipt(env, "replay", "--json", "--new-id", job)
        assert replayed.returncode == 1, replayed.stdout
        [line] = [json.loads(text) for text in replayed.stdout.splitlines()]
        assert line["task_id"] is None
        return line

    rejected = external_payload(merchant_uid, identifier="12345678901")
    assert results.wait(enqueue_issue(rejected, app=producer))["type"] == "cash_receipt.failed"
    assert "not id_taken" in new_id(f"iamport-external:{merchant_uid}")["skipped"]

    for name in ("L" * 98, f"{merchant_uid}-own"):
        issued(producer, results, name)
        spent = enqueue_cancel(refund(name, remaining_amount=20000), app=producer)
        assert results.wait_many(spent, 2)[1]["data"]["error"]["reason"] == "id_taken"
    assert "100 characters" in new_id(f"iamport-external:{'L' * 98}")["skipped"]
    issued(producer, results, f"{merchant_uid}-own-r1", amount=20000)
    assert "order of its own" in new_id(f"iamport-external:{merchant_uid}-own")["skipped"]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_balance_recorded_without_its_tax_free_part_is_completed_by_the_refund_again(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """Review finding F13: a mixed-tax sale's refund came first, without
    remaining_tax_free; its confirmation fails invalid_payload. The refund sent again
    with it issues the balance from the confirmation's kept payload; the confirmation sent
    again is then a duplicate."""
    first = enqueue_cancel(refund(merchant_uid, remaining_amount=20000), app=producer)
    results.wait_many(first, 1)
    sale = external_payload(merchant_uid, tax_free=3000)
    failed = results.wait(enqueue_issue(sale, app=producer))
    assert failed["data"]["error"]["reason"] == "invalid_payload"
    again = refund(merchant_uid, remaining_amount=20000, remaining_tax_free=1000)
    cancelled, reissued = results.wait_many(enqueue_cancel(again, app=producer), 2)
    assert (cancelled["type"], cancelled["data"]["duplicate"]) == ("cash_receipt.cancelled", False)
    assert (reissued["type"], reissued["data"]["receipt"]["amount"]) == (
        "cash_receipt.issued",
        20000,
    )
    body = last_post(sandbox, merchant_uid)
    assert (body["amount"], body["tax_free"]) == (20000, 1000)
    again_sale = results.wait(enqueue_issue(sale, app=producer))
    assert (again_sale["type"], again_sale["data"]["duplicate"]) == ("cash_receipt.issued", True)
    assert requests_of(sandbox, merchant_uid) == ["POST"]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_partial_refund_whose_delete_failed_still_issues_the_balance(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    issued(producer, results, merchant_uid)
    sandbox.admin.script_external(
        merchant_uid, {"kind": "status", "status": 503, "method": "DELETE"}
    )
    cancel = refund(merchant_uid, amount=13000, remaining_amount=20000)
    told = results.transition(enqueue_cancel(cancel, app=producer), timeout=30)
    assert told == [("cash_receipt.cancelled", False, 33000), ("cash_receipt.issued", False, 20000)]
    assert requests_of(sandbox, merchant_uid)[-1] == "POST"
