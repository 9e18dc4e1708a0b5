"""PortOne V2 and the sandbox as an oracle: duplicates it may accept, re-issue after a cancel in
both modes, the audit's `portone` section with its blind POSTs, cancels and retries, and the
reset."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pytest
import requests

from tests.sandbox.client import PortOneApi, v2_failure, v2_success
from tests.support.sandbox import Sandbox, running_sandbox, wait_portone_posts_processed
from tests.support.wait import wait_for


def figures(sandbox: Sandbox, payment_id: str) -> dict[str, int]:
    """The audit's figures for one paymentId (zeros when it saw nothing)."""
    found: dict[str, int] = sandbox.portone_audit()["payment_ids"].get(payment_id, {})
    names = ("created", "active", "max_active", "blind_posts", "blind_cancels", "blind_retries")
    return dict.fromkeys(names, 0) | found


def blind(sandbox: Sandbox, payment_id: str) -> tuple[int, int, int]:
    found = figures(sandbox, payment_id)
    return found["blind_posts"], found["blind_cancels"], found["blind_retries"]


def reasons(sandbox: Sandbox, payment_id: str) -> list[list[str]]:
    """Why each POST (issue or cancel) was judged blind, in order."""
    return [
        e["blind_reasons"] for e in sandbox.portone_requests(payment_id) if e["method"] == "POST"
    ]


# -- duplicates and re-issue ----------------------------------------------------------------


def test_duplicates_allowed_make_a_second_receipt(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """The second POST issues (200, not 409); the lookup shows the newest; a cancel cancels the
    newest first; the audit keeps the double."""
    sandbox.allow_duplicates()
    first = v2_success(v2.issue(payment_id))["cashReceipt"]
    second = v2_success(v2.issue(payment_id))["cashReceipt"]
    assert first["pgReceiptId"] != second["pgReceiptId"]
    assert sandbox.portone_issued_count(payment_id) == 2
    assert v2_success(v2.lookup(payment_id))["pgReceiptId"] == second["pgReceiptId"]
    audit = sandbox.portone_audit()
    assert (audit["double_active"], audit["receipts_created"]) == ([payment_id], 2)
    v2_success(v2.cancel(payment_id))
    shown = v2_success(v2.lookup(payment_id))
    assert (shown["pgReceiptId"], shown["status"]) == (first["pgReceiptId"], "ISSUED")
    v2_success(v2.cancel(payment_id))
    assert figures(sandbox, payment_id) | {"blind_posts": 0} == {
        "created": 2,
        "active": 0,
        "max_active": 2,
        "blind_posts": 0,
        "blind_cancels": 0,
        "blind_retries": 0,
    }


def test_the_duplicate_flag_covers_v2() -> None:
    with running_sandbox("--allow-duplicates") as sandbox:
        v2 = PortOneApi(sandbox.portone_url)
        v2_success(v2.issue("dup"))
        v2_success(v2.issue("dup"))
        assert sandbox.portone_issued_count("dup") == 2


def test_a_manual_issue_on_a_receipt_issued_at_approval_is_a_double(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """Refused by default; with duplicates allowed, the audit shows two receipts at once, the
    one PortOne only knows of from cashReceiptIssuanceStatus counted."""
    sandbox.seed_portone_payment(payment_id, cashReceiptIssuanceStatus="ISSUED")
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    sandbox.allow_duplicates()
    v2_success(v2.issue(payment_id))
    assert sandbox.portone_audit()["double_active"] == [payment_id]
    assert figures(sandbox, payment_id)["created"] == 2


def test_reissue_after_a_cancel_is_refused_by_default(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    assert sandbox.portone_reissue() == "refuse"
    v2_success(v2.issue(payment_id))
    v2_success(v2.cancel(payment_id))
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    assert sandbox.portone_issued_count(payment_id) == 1


def test_reissue_after_a_cancel_when_allowed(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """A new receipt, which the lookup shows; a POST while it is ISSUED is 409 again; the list
    has both."""
    assert sandbox.set_portone_reissue("allow") == {"reissue": "allow"}
    first = v2_success(v2.issue(payment_id))["cashReceipt"]
    v2_success(v2.cancel(payment_id))
    again = v2_success(v2.issue(payment_id, amount={"total": 8000}))["cashReceipt"]
    assert again["pgReceiptId"] != first["pgReceiptId"]
    shown = v2_success(v2.lookup(payment_id))
    assert (shown["pgReceiptId"], shown["amount"]) == (again["pgReceiptId"], 8000)
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    listed = v2_success(v2.list({"filter": {"paymentId": payment_id}}))["items"]
    assert [r["status"] for r in listed] == ["ISSUED", "CANCELLED"]
    assert figures(sandbox, payment_id)["max_active"] == 1


def test_the_reissue_switch_is_checked_and_reset_restores_the_flag(sandbox: Sandbox) -> None:
    for body in ({}, {"reissue": "sometimes"}, {"reissue": "allow", "x": 1}, ["allow"]):
        response = requests.put(f"{sandbox.url}/__sandbox__/portone/reissue", json=body, timeout=5)
        assert response.status_code == 400, body
    sandbox.set_portone_reissue("allow")
    sandbox.reset()
    assert sandbox.portone_reissue() == "refuse"
    with running_sandbox("--portone-reissue", "allow") as other:
        assert other.portone_reissue() == "allow"
        other.set_portone_reissue("refuse")
        other.reset()
        assert other.portone_reissue() == "allow"


# -- blind requests ----------------------------------------------------------------------------


@pytest.mark.parametrize("look", ["receipt", "payment", "list"])
def test_a_post_after_a_lookup_showed_it_issued_is_blind(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, look: str
) -> None:
    """Whichever lookup showed the receipt ISSUED: the receipt's, the payment's, or the list
    filtered by the paymentId; counted whatever the POST is answered, in both modes."""
    sandbox.seed_portone_payment(payment_id)
    v2_success(v2.issue(payment_id))
    if look == "receipt":
        v2_success(v2.lookup(payment_id))
    elif look == "payment":
        assert v2_success(v2.payment(payment_id))["cashReceipt"]["status"] == "ISSUED"
    else:
        v2_success(v2.list({"filter": {"paymentId": payment_id}}))
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    sandbox.allow_duplicates()
    v2_success(v2.issue(payment_id))
    assert blind(sandbox, payment_id) == (2, 0, 0)
    assert reasons(sandbox, payment_id) == [[], ["shown_issued"], ["shown_issued"]]
    assert sandbox.portone_audit()["blind_posts"] == 2


def test_designed_posts_are_not_blind(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """A first attempt meeting 409; a POST after a lookup found nothing; a re-issue after a
    cancel that the lookup had shown ISSUED (the cancel made it stale)."""
    v2_success(v2.issue(payment_id))
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    other = f"{payment_id}-b"
    v2_failure(v2.lookup(other), 404, "CASH_RECEIPT_NOT_FOUND")
    v2_success(v2.issue(other))
    sandbox.set_portone_reissue("allow")
    v2_success(v2.lookup(other))
    v2_success(v2.cancel(other))
    v2_success(v2.issue(other))
    assert blind(sandbox, payment_id) == blind(sandbox, other) == (0, 0, 0)


@pytest.mark.parametrize("look", ["never issued", "cancelled", "payment"])
def test_a_cancel_after_a_lookup_showed_none_is_blind(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, look: str
) -> None:
    if look == "never issued":
        v2_failure(v2.lookup(payment_id), 404, "CASH_RECEIPT_NOT_FOUND")
    elif look == "cancelled":
        v2_success(v2.issue(payment_id))
        v2_success(v2.cancel(payment_id))
        assert v2_success(v2.lookup(payment_id))["status"] == "CANCELLED"
    else:
        sandbox.seed_portone_payment(payment_id, cashReceiptIssuanceStatus="NOT_ISSUED")
        v2_success(v2.payment(payment_id))
    v2.cancel(payment_id)
    assert blind(sandbox, payment_id) == (0, 1, 0)
    assert reasons(sandbox, payment_id)[-1] == ["shown_not_issued"]


@pytest.mark.parametrize(
    "step",
    [
        {"kind": "drop_before"},
        {"kind": "drop_after"},
        {"kind": "status", "status": 504},
        {"kind": "answer", "status": 503, "body_kind": "empty"},
    ],
    ids=["drop_before", "drop_after", "504 page", "empty 503"],
)
def test_a_post_after_an_unanswered_one_without_a_lookup_is_blind(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, step: dict[str, Any]
) -> None:
    """The API's answer never reached the client, which then POSTed again without a key (or
    under another): it could not know whether the first had issued."""
    sandbox.script_portone(payment_id, {**step, "method": "POST"})
    with contextlib.suppress(requests.ConnectionError):
        v2.issue(payment_id, idempotency_key="key-first-attempt-01")
    v2.issue(payment_id)
    v2.issue(payment_id, idempotency_key="key-second-attempt-1")
    assert blind(sandbox, payment_id) == (2, 0, 2)
    assert reasons(sandbox, payment_id) == [[], ["unanswered_post"], ["unanswered_post"]]


def test_a_retry_under_the_same_key_or_after_a_lookup_is_not_blind(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """The documented way to learn a lost answer's outcome, and the look-first way."""
    key = "key-first-attempt-01"
    sandbox.script_portone(payment_id, {"kind": "drop_after"}, {"kind": "drop_before"})
    with pytest.raises(requests.ConnectionError):
        v2.issue(payment_id, idempotency_key=key)
    with pytest.raises(requests.ConnectionError):
        v2.issue(payment_id, idempotency_key=key)
    v2_success(v2.issue(payment_id, idempotency_key=key))
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")

    other = f"{payment_id}-b"
    sandbox.script_portone(other, {"kind": "drop_before"})
    with pytest.raises(requests.ConnectionError):
        v2.issue(other)
    v2_failure(v2.lookup(other), 404, "CASH_RECEIPT_NOT_FOUND")
    v2_success(v2.issue(other))
    assert blind(sandbox, payment_id) == blind(sandbox, other) == (0, 0, 0)


def test_a_post_the_client_gave_up_on_is_unanswered(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """A POST acted on after the client's read timeout: its answer was never read."""
    sandbox.script_portone(payment_id, {"kind": "latency", "ms": 600, "method": "POST"})
    v2.issue_unanswered(payment_id, timeout=0.2)
    wait_portone_posts_processed(sandbox, payment_id, timeout=5)
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    assert blind(sandbox, payment_id) == (1, 0, 1)


def test_a_lookup_still_unanswered_tells_nothing(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """As for i'mport: only answers written before the POST arrived count."""
    v2_success(v2.issue(payment_id))
    sandbox.script_portone(payment_id, {"kind": "latency", "ms": 800, "method": "GET"})
    answers: list[requests.Response] = []
    looking = threading.Thread(target=lambda: answers.append(v2.lookup(payment_id)))
    looking.start()
    wait_for(
        lambda: any(e["method"] == "GET" for e in sandbox.portone_requests(payment_id)),
        timeout=5,
        message="the lookup to arrive",
    )
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    looking.join(timeout=5)
    v2_success(answers[0])
    assert blind(sandbox, payment_id) == (0, 0, 0)
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    assert blind(sandbox, payment_id) == (1, 0, 0)


def test_v2_figures_never_meet_v1_ones(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    v2_success(v2.issue(payment_id))
    audit = sandbox.audit()
    assert audit["payments"] == {}
    assert audit["external"]["merchant_uids"] == {}
    assert list(audit["portone"]["payment_ids"]) == [payment_id]


# -- reset ---------------------------------------------------------------------------------


def test_reset_forgets_v2_state(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """Payments, receipts, the log, keys, scripts, the audit and the modes."""
    sandbox.seed_portone_payment(payment_id)
    v2_success(v2.issue(payment_id, idempotency_key="key-before-reset-01"))
    sandbox.script_portone(payment_id, {"kind": "status", "status": 503})
    sandbox.set_portone_reissue("allow")
    sandbox.reset()
    assert sandbox.portone_requests() == []
    assert sandbox.portone_receipts() == {"receipts": [], "issued_counts": {}}
    assert sandbox.portone_audit()["payment_ids"] == {}
    assert sandbox.faults()["portone_scripts"] == {}
    assert sandbox.portone_idempotency()["keys"] == {}
    assert sandbox.portone_reissue() == "refuse"
    v2_failure(v2.payment(payment_id), 404, "PAYMENT_NOT_FOUND")
    issued = v2_success(v2.issue(payment_id, idempotency_key="key-before-reset-01"))
    assert issued["cashReceipt"]["pgReceiptId"] != "SBX-V2-RCT-0000000001"
