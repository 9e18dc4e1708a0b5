"""The faults of i'mport's routes on PortOne V2's, per paymentId: gateway pages instead of V2's
JSON, empty bodies with Retry-After, 429, dropped connections before and after the work, hangs,
answers after the client's timeout, PG_PROVIDER rejections, and the rates."""

from __future__ import annotations

import time

import pytest
import requests

from tests.sandbox.client import Api, PortOneApi, success, v2_failure, v2_success
from tests.support.sandbox import Sandbox, wait_portone_posts_processed


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_status_fault_is_a_gateway_page_not_v2_json(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, status: int
) -> None:
    """What a load balancer in front of the API answers: HTML; nothing is done; used up."""
    sandbox.script_portone(payment_id, {"kind": "status", "status": status})
    answer = v2.issue(payment_id)
    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith("text/html")
    assert str(status) in answer.text
    assert sandbox.portone_issued_count(payment_id) == 0
    v2_success(v2.issue(payment_id))
    assert [e["fault"] for e in sandbox.portone_requests(payment_id)] == ["status", None]


def test_an_empty_answer_with_retry_after(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    step = {"kind": "answer", "status": 503, "body_kind": "empty", "retry_after": 2}
    sandbox.script_portone(payment_id, step)
    answer = v2.issue(payment_id)
    assert (answer.status_code, answer.content, answer.headers["Retry-After"]) == (503, b"", "2")
    assert sandbox.portone_issued_count(payment_id) == 0


def test_an_answer_in_v2_json_takes_a_type_from_its_status(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """body_kind `envelope` is V2's own error shape here, typed by the status (the sandbox's)."""
    sandbox.script_portone(payment_id, {"kind": "answer", "status": 500, "body_kind": "envelope"})
    v2_failure(v2.issue(payment_id), 500, "INTERNAL_SERVER_ERROR")


def test_rate_limit(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    sandbox.script_portone(payment_id, {"kind": "rate_limit", "retry_after": 0.5})
    answer = v2.lookup(payment_id)
    v2_failure(answer, 429, "TOO_MANY_REQUESTS")
    assert answer.headers["Retry-After"] == "0.5"


def test_garbage(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    sandbox.script_portone(payment_id, {"kind": "garbage", "status": 200, "body": "<p>ok</p>"})
    answer = v2.issue(payment_id)
    assert (answer.status_code, answer.text) == (200, "<p>ok</p>")
    assert sandbox.portone_issued_count(payment_id) == 0


def test_drop_before_does_nothing(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    sandbox.script_portone(payment_id, {"kind": "drop_before"})
    with pytest.raises(requests.ConnectionError):
        v2.issue(payment_id)
    assert sandbox.portone_issued_count(payment_id) == 0
    (entry,) = sandbox.portone_requests(payment_id)
    assert (entry["fault"], entry["status"], entry["outcome"], entry["done"]) == (
        "drop_before",
        None,
        None,
        True,
    )


def test_drop_after_issues_and_loses_the_answer(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """The ambiguous case: the receipt exists, the client heard nothing."""
    sandbox.script_portone(payment_id, {"kind": "drop_after", "method": "POST"})
    with pytest.raises(requests.ConnectionError):
        v2.issue(payment_id)
    assert sandbox.portone_issued_count(payment_id) == 1
    assert v2_success(v2.lookup(payment_id))["status"] == "ISSUED"
    (post, _lookup) = sandbox.portone_requests(payment_id)
    assert (post["status"], post["outcome"]) == (None, 200)


def test_drop_after_on_cancel_cancels(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """`"endpoint": "cancel"` tells V2's cancel (a POST) from its issue."""
    sandbox.script_portone(payment_id, {"kind": "drop_after", "endpoint": "cancel"})
    v2_success(v2.issue(payment_id))
    with pytest.raises(requests.ConnectionError):
        v2.cancel(payment_id)
    assert v2_success(v2.lookup(payment_id))["status"] == "CANCELLED"


def test_hang_does_nothing_and_outlasts_the_client(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    sandbox.script_portone(payment_id, {"kind": "hang"})
    started = time.monotonic()
    v2.issue_unanswered(payment_id, timeout=0.4)
    assert time.monotonic() - started < 2
    wait_portone_posts_processed(sandbox, payment_id, timeout=5)
    assert sandbox.portone_issued_count(payment_id) == 0


def test_hang_after_issues_then_answers_after_the_client_left(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    sandbox.script_portone(payment_id, {"kind": "hang_after", "seconds": 30})
    v2.issue_unanswered(payment_id, timeout=0.4)
    assert sandbox.portone_issued_count(payment_id) == 1
    wait_portone_posts_processed(sandbox, payment_id, timeout=5)
    (entry,) = sandbox.portone_requests(payment_id)
    assert (entry["fault"], entry["status"], entry["outcome"]) == ("hang_after", None, 200)


def test_latency_acts_after_the_client_gave_up(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """The work comes after the delay whether or not the client still waits."""
    sandbox.script_portone(payment_id, {"kind": "latency", "ms": 800, "method": "POST"})
    v2.issue_unanswered(payment_id, timeout=0.2)
    assert sandbox.portone_issued_count(payment_id) == 0
    wait_portone_posts_processed(sandbox, payment_id, timeout=5)
    assert sandbox.portone_issued_count(payment_id) == 1


def test_reject_is_a_pg_provider_error(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """502 PG_PROVIDER with the step's pgCode and message as pgMessage, verbatim."""
    sandbox.script_portone(
        payment_id, {"kind": "reject", "pg_code": "CR-1001", "message": "발급 한도 초과"}
    )
    body = v2_failure(v2.issue(payment_id), 502, "PG_PROVIDER")
    assert (body["pgCode"], body["pgMessage"]) == ("CR-1001", "발급 한도 초과")
    assert v2_success(v2.lookup(payment_id))["status"] == "ISSUE_FAILED"
    assert sandbox.portone_issued_count(payment_id) == 0


def test_reject_on_cancel_keeps_the_receipt(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    v2_success(v2.issue(payment_id))
    sandbox.script_portone(payment_id, {"kind": "reject", "endpoint": "cancel", "message": "불가"})
    body = v2_failure(v2.cancel(payment_id), 502, "PG_PROVIDER")
    assert (body["pgCode"], body["pgMessage"]) == ("SANDBOX_REJECT", "불가")
    assert v2_success(v2.lookup(payment_id))["status"] == "ISSUED"


def test_revoke_tokens_is_a_401_and_kills_logins_not_the_secret(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    login = v2.call("POST", "/login/api-secret", auth=None, json={"apiSecret": v2.secret})
    bearer = f"Bearer {v2_success(login)['accessToken']}"
    sandbox.script_portone(payment_id, {"kind": "revoke_tokens"})
    v2_failure(v2.issue(payment_id), 401, "UNAUTHORIZED")
    v2_failure(v2.call("GET", "/cash-receipts", auth=bearer), 401, "UNAUTHORIZED")
    v2_success(v2.issue(payment_id))


def test_step_filters_pick_the_route(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """`payments` is GET /payments/{paymentId}; `receipts` the cash-receipt routes, the list
    filtered by the paymentId included; `cancel` the cancel."""
    sandbox.seed_portone_payment(payment_id)
    sandbox.script_portone(
        payment_id,
        {"kind": "status", "status": 502, "endpoint": "payments"},
        {"kind": "status", "status": 503, "endpoint": "receipts", "method": "GET"},
        {"kind": "status", "status": 504, "endpoint": "cancel"},
    )
    v2_success(v2.issue(payment_id))
    assert v2.list({"filter": {"paymentId": payment_id}}).status_code == 503
    assert v2.cancel(payment_id).status_code == 504
    assert v2.payment(payment_id).status_code == 502
    assert sandbox.faults()["portone_scripts"] == {}


def test_scripts_are_per_payment_id_and_kind(
    api: Api, v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """A V2 paymentId's step never strikes the i'mport imp_uid of the same name, nor the other
    way round."""
    sandbox.script_portone(payment_id, {"kind": "status", "status": 503})
    sandbox.script(payment_id, {"kind": "status", "status": 502})
    assert list(sandbox.faults()["portone_scripts"]) == [payment_id]
    v2_success(v2.issue(f"{payment_id}-other"))
    assert v2.issue(payment_id).status_code == 503
    v2_success(v2.issue(payment_id))
    assert api.issue(payment_id).status_code == 502
    success(api.issue(payment_id))


def test_rates_strike_v2_too_but_never_the_login(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    sandbox.set_rates(rates={"status_503": 1.0})
    answer = v2.issue(payment_id)
    assert (answer.status_code, answer.headers["Content-Type"][:9]) == (503, "text/html")
    assert v2.lookup(payment_id).status_code == 503
    v2_success(v2.call("POST", "/login/api-secret", auth=None, json={"apiSecret": v2.secret}))

    sandbox.set_rates(rates={"reject": 1.0}, reject_message="카드사 거절")
    assert v2_failure(v2.issue(payment_id), 502, "PG_PROVIDER")["pgMessage"] == "카드사 거절"
    assert v2_success(v2.lookup(payment_id))["status"] == "ISSUE_FAILED"

    sandbox.set_rates(rates={"drop_after": 1.0})
    with pytest.raises(requests.ConnectionError):
        v2.issue(payment_id)
    sandbox.clear_faults()
    assert sandbox.portone_issued_count(payment_id) == 1


def test_global_latency_applies(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    sandbox.set_rates(latency_ms=200)
    started = time.monotonic()
    v2_failure(v2.lookup(payment_id), 404, "CASH_RECEIPT_NOT_FOUND")
    assert time.monotonic() - started >= 0.2
