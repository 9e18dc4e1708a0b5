"""Each fault kind as a client meets it over a real socket, scripted and as rates."""

from __future__ import annotations

import time

import pytest
import requests

from tests.sandbox.client import Api, failure, success
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for


def test_latency_step_delays_then_answers(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A latency step holds the answer for its ms, then the request proceeds normally."""
    sandbox.script(imp_uid, {"kind": "latency", "ms": 300})
    started = time.monotonic()
    success(api.issue(imp_uid))
    assert time.monotonic() - started >= 0.3
    success(api.lookup(imp_uid))
    # Used up: the lookup met no fault. (Timing it instead raced the machine's load.)
    assert [(r["method"], r["fault"]) for r in sandbox.requests(imp_uid)] == [
        ("POST", "latency"),
        ("GET", None),
    ]


def test_global_latency_and_jitter(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """latency_ms + uniform jitter applies to every receipts/payments request."""
    sandbox.set_rates(latency_ms=100, latency_jitter_ms=50)
    for _ in range(3):
        started = time.monotonic()
        success(api.payment(imp_uid))
        elapsed = time.monotonic() - started
        assert 0.1 <= elapsed < 1.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_status_step(api: Api, sandbox: Sandbox, imp_uid: str, status: int) -> None:
    """An injected 5xx answers in the envelope, does nothing, and is used up."""
    sandbox.script(imp_uid, {"kind": "status", "status": status})
    failure(api.issue(imp_uid), status)
    assert sandbox.issued_count(imp_uid) == 0
    success(api.issue(imp_uid))


@pytest.mark.parametrize("status", [200, 502])
def test_garbage_step_answers_html_instead_of_the_envelope(
    api: Api, sandbox: Sandbox, imp_uid: str, status: int
) -> None:
    """A gateway's HTML page in place of i'mport's JSON; nothing is created."""
    sandbox.script(imp_uid, {"kind": "garbage", "status": status, "body": "<h1>oops</h1>"})
    answer = api.issue(imp_uid)
    assert answer.status_code == status
    assert answer.headers["Content-Type"].startswith("text/html")
    assert answer.text == "<h1>oops</h1>"
    assert sandbox.issued_count(imp_uid) == 0
    success(api.issue(imp_uid))


@pytest.mark.parametrize("status", [408, 425, 429, 500, 503])
@pytest.mark.parametrize(
    ("body_kind", "content_type", "is_envelope"),
    [
        ("empty", None, False),
        ("html", "text/html", False),
        ("json", "application/json", False),
        ("envelope", "application/json", True),
    ],
)
def test_answer_step_gives_each_status_each_body(
    api: Api,
    sandbox: Sandbox,
    imp_uid: str,
    status: int,
    body_kind: str,
    content_type: str | None,
    is_envelope: bool,
) -> None:
    """Any status with an empty body, a gateway's page, other JSON or i'mport's envelope."""
    sandbox.script(imp_uid, {"kind": "answer", "status": status, "body_kind": body_kind})
    answer = api.issue(imp_uid)
    assert answer.status_code == status
    assert "Retry-After" not in answer.headers
    if content_type is None:
        assert answer.content == b""
    else:
        assert answer.headers["Content-Type"].startswith(content_type)
    if content_type == "application/json":
        assert ({"code", "message", "response"} <= set(answer.json())) is is_envelope
    assert sandbox.issued_count(imp_uid) == 0
    success(api.issue(imp_uid))


@pytest.mark.parametrize(
    "retry_after", [3, 0.5, "Wed, 21 Oct 2026 07:28:00 GMT"], ids=["seconds", "fraction", "date"]
)
def test_answer_step_sends_retry_after_as_given(
    api: Api, sandbox: Sandbox, imp_uid: str, retry_after: float | str
) -> None:
    """Retry-After in seconds or as an HTTP date, on any answer."""
    step = {"kind": "answer", "status": 503, "body_kind": "html", "retry_after": retry_after}
    sandbox.script(imp_uid, step)
    assert api.issue(imp_uid).headers["Retry-After"] == str(retry_after)


def test_late_limit_caps_how_late_a_request_is_acted_on(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """With late_limit_seconds, a 5 s latency spike acts on the request within the limit."""
    sandbox.set_rates(late_limit_seconds=0.3)
    sandbox.script(imp_uid, {"kind": "latency", "ms": 5000})
    started = time.monotonic()
    success(api.issue(imp_uid))
    assert time.monotonic() - started < 2
    assert sandbox.faults()["late_limit_seconds"] == 0.3


def test_rate_limit_step(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """429 carries Retry-After (default 1 s), and nothing is done."""
    sandbox.script(imp_uid, {"kind": "rate_limit"}, {"kind": "rate_limit", "retry_after": 0.1})
    first = api.issue(imp_uid)
    failure(first, 429)
    assert first.headers["Retry-After"] == "1"
    second = api.issue(imp_uid)
    failure(second, 429)
    assert second.headers["Retry-After"] == "0.1"
    assert sandbox.issued_count(imp_uid) == 0


def test_drop_before(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """The connection closes with no answer and nothing is created."""
    sandbox.script(imp_uid, {"kind": "drop_before"})
    with pytest.raises(requests.ConnectionError):
        api.issue(imp_uid)
    assert sandbox.issued_count(imp_uid) == 0
    assert sandbox.receipts()["receipts"] == []
    logged = sandbox.requests(imp_uid)
    assert [(r["fault"], r["status"]) for r in logged] == [("drop_before", None)]


def test_drop_after_is_the_ambiguous_case(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """The receipt is created, then the connection closes: the client cannot know."""
    sandbox.script(imp_uid, {"kind": "drop_after", "method": "POST"})
    with pytest.raises(requests.ConnectionError):
        api.issue(imp_uid)
    assert sandbox.issued_count(imp_uid) == 1
    assert success(api.lookup(imp_uid))["cancelled_at"] == 0
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True
    assert "이미" in failure(api.issue(imp_uid), 400)


def test_drop_after_on_cancel_cancels(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """drop_after on DELETE cancels the receipt and loses the answer."""
    success(api.issue(imp_uid))
    sandbox.script(imp_uid, {"kind": "drop_after", "method": "DELETE"})
    with pytest.raises(requests.ConnectionError):
        api.cancel(imp_uid)
    assert success(api.lookup(imp_uid))["cancelled_at"] > 0


def test_hang_after_acts_then_outlasts_the_client(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """hang_after issues at once, then holds the answer: the client's read timeout fires with
    the receipt made, and the log says what was done though nothing was sent."""
    sandbox.script(imp_uid, {"kind": "hang_after", "method": "POST"})
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        api.call("POST", f"/receipts/{imp_uid}", json={"identifier": "01012345678"}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert sandbox.issued_count(imp_uid) == 1
    assert success(api.lookup(imp_uid))["cancelled_at"] == 0
    wait_for(
        lambda: sandbox.requests(imp_uid)[0].get("outcome") == 200,
        timeout=5,
        message="the held POST to be logged",
    )
    (post, _lookup) = sandbox.requests(imp_uid)
    assert (post["fault"], post["status"], post["outcome"]) == ("hang_after", None, 200)


def test_short_hang_after_answers_late(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A hang_after shorter than the client's timeout delivers the answer, late."""
    sandbox.script(imp_uid, {"kind": "hang_after", "seconds": 0.3})
    started = time.monotonic()
    success(api.issue(imp_uid))
    assert time.monotonic() - started >= 0.3
    (post,) = sandbox.requests(imp_uid)
    assert (post["status"], post["outcome"]) == (200, 200)


def test_hang_outlasts_the_client_timeout(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A hang never answers: a 0.5 s read timeout fires and nothing is created."""
    sandbox.script(imp_uid, {"kind": "hang"})
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        api.call("POST", f"/receipts/{imp_uid}", json={"identifier": "01012345678"}, timeout=0.5)
    assert time.monotonic() - started < 2
    assert sandbox.issued_count(imp_uid) == 0
    success(api.issue(imp_uid))


def test_short_hang_ends_in_a_dropped_connection(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A hang shorter than the client's timeout ends with the connection closed, unanswered."""
    sandbox.script(imp_uid, {"kind": "hang", "seconds": 0.2})
    with pytest.raises(requests.ConnectionError):
        api.payment(imp_uid)


def test_revoke_tokens_step(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """Every token dies at once: this request gets 401, and getToken gives a new token."""
    sandbox.script(imp_uid, {"kind": "revoke_tokens", "method": "POST"})
    failure(api.issue(imp_uid), 401)
    failure(api.lookup(imp_uid), 401)
    fresh = Api(sandbox.url, sandbox.get_token())
    assert fresh.token != api.token
    success(fresh.issue(imp_uid))


def test_reject_passes_the_pg_message(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A PG rejection is 500 whose message is the PG's own words, and nothing is issued."""
    sandbox.script(imp_uid, {"kind": "reject", "message": "PG: 발급 불가 카드"})
    assert failure(api.issue(imp_uid), 500) == "PG: 발급 불가 카드"
    assert sandbox.issued_count(imp_uid) == 0
    success(api.issue(imp_uid))


def test_reject_on_cancel(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A PG refusing a cancellation is 500 and the receipt stays active."""
    success(api.issue(imp_uid))
    sandbox.script(imp_uid, {"kind": "reject", "method": "DELETE", "message": "취소 불가"})
    assert failure(api.cancel(imp_uid), 500) == "취소 불가"
    assert success(api.lookup(imp_uid))["cancelled_at"] == 0


def test_steps_wait_for_a_matching_request(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A POST-only step lets GETs through and strikes the next POST; steps run in order."""
    sandbox.script(
        imp_uid,
        {"kind": "status", "status": 503, "method": "POST"},
        {"kind": "status", "status": 502, "endpoint": "payments"},
    )
    failure(api.lookup(imp_uid), 404)
    failure(api.payment(imp_uid), 502)
    failure(api.issue(imp_uid), 503)
    success(api.issue(imp_uid))
    assert sandbox.faults()["scripts"] == {}


def test_scripts_are_per_imp_uid(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A step for one payment never touches another."""
    sandbox.script(imp_uid, {"kind": "status", "status": 503})
    success(api.issue(f"{imp_uid}_other"))
    failure(api.issue(imp_uid), 503)


@pytest.mark.parametrize(
    ("rate", "status"),
    [("status_500", 500), ("status_502", 502), ("status_503", 503), ("status_504", 504)],
)
def test_status_rates(api: Api, sandbox: Sandbox, imp_uid: str, rate: str, status: int) -> None:
    """A rate of 1 makes every receipts and payments request fail that way."""
    sandbox.set_rates(rates={rate: 1.0})
    failure(api.issue(imp_uid), status)
    failure(api.payment(imp_uid), status)
    sandbox.clear_faults()
    success(api.issue(imp_uid))


def test_rates_for_every_other_kind(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """rate_limit, drop_before, drop_after, hang, hang_after, revoke_tokens and reject each fire
    at rate 1."""
    sandbox.set_rates(rates={"rate_limit": 1.0}, retry_after=2)
    response = api.issue(imp_uid)
    failure(response, 429)
    assert response.headers["Retry-After"] == "2"

    sandbox.set_rates(rates={"drop_before": 1.0})
    with pytest.raises(requests.ConnectionError):
        api.issue(imp_uid)
    assert sandbox.issued_count(imp_uid) == 0

    sandbox.set_rates(rates={"reject": 1.0}, reject_message="카드사 거절")
    assert failure(api.issue(imp_uid), 500) == "카드사 거절"

    sandbox.set_rates(rates={"drop_after": 1.0})
    with pytest.raises(requests.ConnectionError):
        api.issue(imp_uid)
    assert sandbox.issued_count(imp_uid) == 1

    sandbox.set_rates(rates={"hang": 1.0}, hang_seconds=30)
    with pytest.raises(requests.ReadTimeout):
        api.call("GET", f"/payments/{imp_uid}", timeout=0.3)

    sandbox.set_rates(rates={"hang_after": 1.0}, hang_seconds=30)
    with pytest.raises(requests.ReadTimeout):
        api.call("DELETE", f"/receipts/{imp_uid}", timeout=0.3)
    sandbox.clear_faults()
    assert success(api.lookup(imp_uid))["cancelled_at"] > 0

    sandbox.set_rates(rates={"revoke_tokens": 1.0})
    failure(api.payment(imp_uid), 401)
    sandbox.clear_faults()
    failure(api.payment(imp_uid), 401)


def test_faults_spare_get_token(sandbox: Sandbox) -> None:
    """Rates strike receipts and payments only; a client can always get a token."""
    sandbox.set_rates(rates={"status_503": 1.0}, latency_ms=0)
    assert sandbox.get_token()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("faults/imp_x", {"script": []}),
        ("faults/imp_x", {"script": [{"kind": "explode"}]}),
        ("faults/imp_x", [{"kind": "hang"}]),
        ("faults", {"rates": {"status_418": 1}}),
        ("faults", {"rates": {"hang": 2}}),
        ("faults", {"latency_ms": "slow"}),
        ("token", {"lifetime_seconds": 0}),
        ("token", {"lifetime_seconds": "long"}),
        ("token", {"lifespan": 10}),
        ("clock", {"advance_seconds": -5}),
        ("payments/imp_x", {"amount": -1}),
        ("payments/imp_x", {"amount": 100, "cancel_amount": 200}),
        ("payments/imp_x", {"status": "refunded"}),
        ("payments/imp_x", {"pay_method": ""}),
        ("payments/imp_x", {"cash_receipt_issued": "yes"}),
        ("payments/imp_x", {"colour": "red"}),
    ],
)
def test_bad_admin_input_is_400(sandbox: Sandbox, path: str, body: object) -> None:
    """Admin bodies are validated: 400 with an `error` message, and nothing changes."""
    before = sandbox.faults()
    method = "PUT" if path in {"faults", "token"} or path.startswith("payments") else "POST"
    response = requests.request(method, f"{sandbox.url}/__sandbox__/{path}", json=body, timeout=5)
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert sandbox.faults() == before


def test_admin_rejects_broken_json(sandbox: Sandbox) -> None:
    """A body that is not JSON is 400 too."""
    response = requests.put(f"{sandbox.url}/__sandbox__/faults", data="{", timeout=5)
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
