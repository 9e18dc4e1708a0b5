"""PortOne V2's Idempotency-Key over HTTP: a replay of the stored answer, a key still outstanding,
a key reused for another request, keys expiring on the sandbox clock, and the key's format."""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from typing import Any

import pytest
import requests

from tests.sandbox.client import PortOneApi, issue_body, v2_failure, v2_success
from tests.support.sandbox import Sandbox, running_sandbox, wait_portone_posts_processed
from tests.support.wait import wait_for


@pytest.fixture
def key() -> str:
    """A fresh key as a worker would make one: well within 16-256 ASCII characters."""
    return f"key-{uuid.uuid4()}"


def idempotency(sandbox: Sandbox, payment_id: str) -> list[str | None]:
    """What the sandbox did with each request's key, in order."""
    return [entry["idempotency"] for entry in sandbox.portone_requests(payment_id)]


def test_same_key_same_body_replays_without_acting(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """Status, body and all: the stored answer, and still one receipt."""
    first = v2.issue(payment_id, idempotency_key=key)
    again = v2.issue(payment_id, idempotency_key=key)
    assert (again.status_code, again.json()) == (first.status_code, v2_success(first))
    assert sandbox.portone_issued_count(payment_id) == 1
    assert idempotency(sandbox, payment_id) == ["new", "replayed"]
    (post, replay) = sandbox.portone_requests(payment_id)
    assert (post["outcome"], replay["outcome"]) == (200, None)


def test_a_stored_error_is_replayed_even_after_the_state_changed(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """A key's answer is its first request's, 409 or 502 alike, whatever happened since."""
    v2_success(v2.issue(payment_id))
    v2_failure(v2.issue(payment_id, idempotency_key=key), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    sandbox.set_portone_reissue("allow")
    v2_success(v2.cancel(payment_id))
    v2_failure(v2.issue(payment_id, idempotency_key=key), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    v2_success(v2.issue(payment_id, idempotency_key=f"{key}-b"))

    rejected = f"{payment_id}-pg"
    sandbox.script_portone(rejected, {"kind": "reject", "pg_code": "E1", "message": "거절"})
    body = v2_failure(v2.issue(rejected, idempotency_key=f"{key}-c"), 502, "PG_PROVIDER")
    assert v2.issue(rejected, idempotency_key=f"{key}-c").json() == body
    assert sandbox.portone_issued_count(rejected) == 0


def test_a_key_still_processing_is_outstanding(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """While the first request with the key is being processed (slow PG), the same request
    gets 409 IDEMPOTENCY_OUTSTANDING_REQUEST; once it is done, the stored answer."""
    sandbox.script_portone(payment_id, {"kind": "latency", "ms": 1500, "method": "POST"})
    answers: list[requests.Response] = []
    first = threading.Thread(
        target=lambda: answers.append(v2.issue(payment_id, idempotency_key=key))
    )
    first.start()
    wait_for(
        lambda: idempotency(sandbox, payment_id) == ["new"],
        timeout=5,
        message="the first POST to hold its key",
    )
    v2_failure(v2.issue(payment_id, idempotency_key=key), 409, "IDEMPOTENCY_OUTSTANDING_REQUEST")
    assert sandbox.portone_idempotency()["keys"][key]["state"] == "outstanding"
    first.join(timeout=10)
    issued = v2_success(answers[0])
    assert v2_success(v2.issue(payment_id, idempotency_key=key)) == issued
    assert sandbox.portone_issued_count(payment_id) == 1
    assert idempotency(sandbox, payment_id) == ["new", "outstanding", "replayed"]


def test_a_request_acted_on_after_the_client_gave_up(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """The client's read timeout fires while the sandbox is slow to act: a retry under the key
    is outstanding until the work is done, then learns its outcome."""
    sandbox.script_portone(payment_id, {"kind": "latency", "ms": 1000, "method": "POST"})
    v2.issue_unanswered(payment_id, idempotency_key=key, timeout=0.3)
    v2_failure(v2.issue(payment_id, idempotency_key=key), 409, "IDEMPOTENCY_OUTSTANDING_REQUEST")
    wait_portone_posts_processed(sandbox, payment_id, timeout=10)
    v2_success(v2.issue(payment_id, idempotency_key=key))
    assert sandbox.portone_issued_count(payment_id) == 1


@pytest.mark.parametrize("kind", ["drop_after", "hang_after"])
def test_the_lost_answer_of_a_done_request_is_replayed(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str, kind: str
) -> None:
    """The receipt was made and the answer lost (dropped, or held past the client's timeout):
    the same key gets that answer, and issues nothing more."""
    sandbox.script_portone(payment_id, {"kind": kind, "method": "POST"})
    v2.issue_unanswered(
        payment_id,
        idempotency_key=key,
        timeout=0.5,
        expect=(requests.ConnectionError, requests.ReadTimeout),
    )
    replayed = v2_success(v2.issue(payment_id, idempotency_key=key))
    assert (
        replayed["cashReceipt"]["pgReceiptId"] == v2_success(v2.lookup(payment_id))["pgReceiptId"]
    )
    assert sandbox.portone_issued_count(payment_id) == 1


@pytest.mark.parametrize(
    "step",
    [
        {"kind": "status", "status": 503},
        {"kind": "drop_before"},
        {"kind": "rate_limit"},
        {"kind": "answer", "status": 500, "body_kind": "empty"},
    ],
    ids=["503", "drop_before", "429", "empty 500"],
)
def test_a_fault_before_the_api_stores_nothing(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str, step: dict[str, Any]
) -> None:
    """What a gateway answers never reached the API: the key is free, the retry acts."""
    sandbox.script_portone(payment_id, step)
    with contextlib.suppress(requests.ConnectionError):
        assert v2.issue(payment_id, idempotency_key=key).status_code != 200
    assert key not in sandbox.portone_idempotency()["keys"]
    v2_success(v2.issue(payment_id, idempotency_key=key))
    assert idempotency(sandbox, payment_id) == [None, "new"]


def test_a_request_refused_before_its_work_stores_nothing(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """A malformed body, a bad secret or another store is refused before the key is taken."""
    v2_failure(v2.issue(payment_id, idempotency_key=key, currency="WON"), 400, "INVALID_REQUEST")
    body = issue_body(payment_id)
    refused = v2.call("POST", "/cash-receipts", idempotency_key=key, json=body, auth="PortOne x")
    v2_failure(refused, 401, "UNAUTHORIZED")
    v2_failure(v2.issue(payment_id, idempotency_key=key, storeId="store-x"), 403, "FORBIDDEN")
    v2_success(v2.issue(payment_id, idempotency_key=key))
    assert idempotency(sandbox, payment_id) == [None, None, None, "new"]


def test_a_key_reused_for_another_request_is_refused(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """Another body, another path or another query under the same key: 422
    IDEMPOTENCY_KEY_REUSED, and nothing is done."""
    v2_success(v2.issue(payment_id, idempotency_key=key))
    for answer in (
        v2.issue(payment_id, idempotency_key=key, orderName="다른 주문"),
        v2.issue(f"{payment_id}-b", idempotency_key=key),
        v2.cancel(payment_id, idempotency_key=key),
        v2.call(
            "POST",
            "/cash-receipts",
            idempotency_key=key,
            json=issue_body(payment_id),
            params={"x": "1"},
        ),
    ):
        v2_failure(answer, 422, "IDEMPOTENCY_KEY_REUSED")
    assert sandbox.portone_issued_count(payment_id) == 1
    assert sandbox.portone_issued_count(f"{payment_id}-b") == 0
    assert v2_success(v2.lookup(payment_id))["status"] == "ISSUED"


def test_same_json_in_other_bytes_is_another_request(
    v2: PortOneApi, payment_id: str, key: str
) -> None:
    """The sandbox compares the body byte for byte (the hostile reading): a retry must send
    what it sent, not the same JSON serialized again differently."""
    body = issue_body(payment_id)
    compact = json_bytes(body, separators=(",", ":"))
    spaced = json_bytes(body, separators=(", ", ": "))
    headers = {"Content-Type": "application/json"}
    v2_success(
        v2.call("POST", "/cash-receipts", idempotency_key=key, data=compact, headers=headers)
    )
    again = v2.call("POST", "/cash-receipts", idempotency_key=key, data=spaced, headers=headers)
    v2_failure(again, 422, "IDEMPOTENCY_KEY_REUSED")


def json_bytes(body: dict[str, Any], *, separators: tuple[str, str]) -> bytes:
    return json.dumps(body, separators=separators, ensure_ascii=False).encode()


def test_cancel_takes_a_key_too(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """A replayed cancel answers as the first did, rather than CASH_RECEIPT_NOT_ISSUED."""
    v2_success(v2.issue(payment_id))
    sandbox.script_portone(payment_id, {"kind": "drop_after", "endpoint": "cancel"})
    with pytest.raises(requests.ConnectionError):
        v2.cancel(payment_id, idempotency_key=key)
    cancelled = v2_success(v2.cancel(payment_id, idempotency_key=key))
    assert cancelled["cancelledAmount"] == 11000
    v2_failure(v2.cancel(payment_id), 404, "CASH_RECEIPT_NOT_ISSUED")


def test_keys_expire_after_3_hours_on_the_sandbox_clock(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """Up to 3 hours after its first request a key replays; from then on it is new again, so the
    same request acts again (and, a receipt being issued, is refused as already issued)."""
    assert sandbox.portone_idempotency()["retention_seconds"] == 10800
    v2_success(v2.issue(payment_id, idempotency_key=key))
    sandbox.advance_clock(10799)
    v2_success(v2.issue(payment_id, idempotency_key=key))
    sandbox.advance_clock(1)
    assert key not in sandbox.portone_idempotency()["keys"]
    v2_failure(v2.issue(payment_id, idempotency_key=key), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    assert idempotency(sandbox, payment_id) == ["new", "replayed", "new"]


def test_retention_is_adjustable_at_run_time(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    """PUT /__sandbox__/portone/idempotency {"retention_seconds": N}; a reset restores the flag."""
    sandbox.allow_duplicates()
    v2_success(v2.issue(payment_id, idempotency_key=key))
    view = sandbox.set_idempotency_retention(60)
    assert view["retention_seconds"] == 60
    assert view["keys"][key]["state"] == "completed"
    sandbox.advance_clock(61)
    v2_success(v2.issue(payment_id, idempotency_key=key))
    assert sandbox.portone_issued_count(payment_id) == 2
    for body in ({}, {"retention_seconds": -1}, {"retention_seconds": "3h"}, [60]):
        response = requests.put(
            f"{sandbox.url}/__sandbox__/portone/idempotency", json=body, timeout=5
        )
        assert response.status_code == 400, body
    sandbox.reset()
    assert sandbox.portone_idempotency() == {"retention_seconds": 10800, "keys": {}}


def test_retention_flag() -> None:
    with running_sandbox("--idempotency-retention", "30") as sandbox:
        v2 = PortOneApi(sandbox.portone_url)
        key = "key-retention-flag-01"
        v2_success(v2.issue("p-1", idempotency_key=key))
        sandbox.advance_clock(30)
        v2_failure(v2.issue("p-1", idempotency_key=key), 409, "CASH_RECEIPT_ALREADY_ISSUED")
        assert sandbox.portone_idempotency()["retention_seconds"] == 30


@pytest.mark.parametrize(
    "header",
    [
        "key-unquoted-0000001",
        "'key-single-quoted-01'",
        '"short-key"',
        '"' + "k" * 257 + '"',
        '""',
        '"key-with-é-character"',
    ],
)
def test_a_malformed_key_is_invalid_request(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, header: str
) -> None:
    """16-256 ASCII characters in double quotes (RFC 8941), as PortOne's docs ask."""
    answer = v2.call(
        "POST",
        "/cash-receipts",
        json=issue_body(payment_id),
        headers={"Idempotency-Key": header.encode("utf-8").decode("latin-1")},
    )
    v2_failure(answer, 400, "INVALID_REQUEST")
    assert sandbox.portone_issued_count(payment_id) == 0
    assert idempotency(sandbox, payment_id) == ["invalid"]


def test_the_key_is_ignored_on_get(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """PortOne: "GET은 무시됨": even a malformed key does not matter on a lookup."""
    v2_success(v2.issue(payment_id))
    for header in ('"key-on-a-lookup-0001"', "bad"):
        v2_success(
            v2.call(
                "GET", f"/payments/{payment_id}/cash-receipt", headers={"Idempotency-Key": header}
            )
        )
    assert sandbox.portone_idempotency()["keys"] == {}


def test_keys_are_listed_and_reset(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, key: str
) -> None:
    v2_failure(v2.cancel(payment_id, idempotency_key=key), 404, "CASH_RECEIPT_NOT_FOUND")
    stored = sandbox.portone_idempotency()["keys"][key]
    assert (stored["state"], stored["status"]) == ("completed", 404)
    assert stored["expires_at"] - stored["created_at"] == 10800
    sandbox.reset()
    assert sandbox.portone_idempotency()["keys"] == {}
