"""The three /receipts/external/{merchant_uid} endpoints: the body, the answers, re-issue after a
cancel in both modes, and the faults, log and audit they share with payment receipts without ever
sharing an entry with the payment of the same id."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.sandbox.client import Api, failure, success
from tests.support.sandbox import Sandbox, running_sandbox, wait_external_posts_processed

EXTERNAL_FIELDS = frozenset(
    {
        "merchant_uid",
        "receipt_tid",
        "apply_num",
        "type",
        "amount",
        "vat",
        "receipt_url",
        "applied_at",
        "cancelled_at",
    }
)
ALREADY_ISSUED = "이미 현금영수증이 발행된 주문번호(merchant_uid)입니다."
NOTHING_TO_CANCEL = "취소할 현금영수증 발행 내역이 존재하지 않습니다."


@pytest.fixture
def merchant_uid() -> str:
    return f"order_{uuid.uuid4().hex[:12]}"


def external_figures(sandbox: Sandbox, merchant_uid: str) -> dict[str, int]:
    """The audit's figures for one external sale (zeros when it saw nothing)."""
    found: dict[str, int] = sandbox.audit()["external"]["merchant_uids"].get(merchant_uid, {})
    zeros = dict.fromkeys(("created", "active", "max_active", "blind_posts", "blind_deletes"), 0)
    return zeros | found


# -- round trip ---------------------------------------------------------------------------


def test_issue_lookup_cancel_round_trip(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """The ExternalReceiptAnnotation in, the same receipt looked up, then cancelled and shown so."""
    issued = success(api.issue_external(merchant_uid, amount=22000, type="company"))
    assert set(issued) == EXTERNAL_FIELDS
    assert issued["merchant_uid"] == merchant_uid
    assert issued["receipt_tid"].startswith("SBX-RCT-")
    assert len(issued["apply_num"]) == 9
    assert (issued["type"], issued["amount"], issued["vat"]) == ("company", 22000, 2000)
    assert (issued["applied_at"] > 0, issued["cancelled_at"]) == (True, 0)
    assert requests.get(issued["receipt_url"], timeout=5).status_code == 200
    assert success(api.lookup_external(merchant_uid)) == issued

    cancelled = success(api.cancel_external(merchant_uid))
    assert cancelled["receipt_tid"] == issued["receipt_tid"]
    assert cancelled["cancelled_at"] > 0
    assert success(api.lookup_external(merchant_uid)) == cancelled
    assert failure(api.cancel_external(merchant_uid), 400) == NOTHING_TO_CANCEL
    assert sandbox.external_issued_count(merchant_uid) == 1


def test_never_issued_is_404(api: Api, merchant_uid: str) -> None:
    """Lookup and cancel of a merchant_uid with no receipt: the spec's 404."""
    failure(api.lookup_external(merchant_uid), 404)
    failure(api.cancel_external(merchant_uid), 404)


def test_token_is_checked(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """No token or a bad one is 401 and issues nothing, on all three routes."""
    for style, token in (("none", None), ("bearer", "not-a-token")):
        answer = api.call(
            "POST",
            f"/receipts/external/{merchant_uid}",
            style=style,
            token=token,
            json={"channel_key": "c", "name": "n", "amount": 1000, "identifier": "01012345678"},
        )
        failure(answer, 401)
        failure(
            api.call("GET", f"/receipts/external/{merchant_uid}", style=style, token=token), 401
        )
        failure(
            api.call("DELETE", f"/receipts/external/{merchant_uid}", style=style, token=token), 401
        )
    assert sandbox.external_issued_count(merchant_uid) == 0


def test_every_field_as_a_form_reaches_the_log(
    api: Api, sandbox: Sandbox, merchant_uid: str
) -> None:
    """A form with every spec field issues; the log keeps what was sent, identifiers masked."""
    form = {
        "channel_key": "channel-key-1234",
        "name": "현금 주문 1",
        "amount": "33000",
        "identifier": "1168200276",
        "identifier_type": "business",
        "type": "company",
        "product_type": "digital",
        "buyer_name": "홍길동",
        "buyer_email": "buyer@example.com",
        "buyer_tel": "01098765432",
        "tax_free": "11000",
        "corp_reg_no": "1168200276",
        "pay_method": "trans",
    }
    receipt = success(api.call("POST", f"/receipts/external/{merchant_uid}", data=form))
    assert (receipt["amount"], receipt["vat"]) == (33000, 2000)
    (entry,) = sandbox.external_requests(merchant_uid)
    assert (entry["method"], entry["path"], entry["status"]) == (
        "POST",
        f"/receipts/external/{merchant_uid}",
        200,
    )
    assert (entry["merchant_uid"], entry["imp_uid"]) == (merchant_uid, None)
    assert entry["body"] == form | {"identifier": "116***0276", "buyer_tel": "010****5432"}
    (kept,) = sandbox.receipts()["external_receipts"]
    assert kept["merchant_uid"] == merchant_uid
    assert kept["request"]["channel_key"] == "channel-key-1234"
    assert "01098765432" not in str(sandbox.requests())


@pytest.mark.parametrize(
    ("body", "vat"),
    [
        ({"amount": 11000}, 1000),
        ({"amount": 10005}, 909),
        ({"amount": 20000, "tax_free": 9000}, 1000),
        ({"amount": 11000, "tax_free": 11000}, 0),
        ({"amount": 11000, "vat_amount": 0}, 0),
        ({"amount": 11000, "vat_amount": 500}, 500),
    ],
)
def test_vat(api: Api, merchant_uid: str, body: dict[str, Any], vat: int) -> None:
    """vat_amount if sent, else floor((amount - tax_free) / 11), as for payments."""
    assert success(api.issue_external(merchant_uid, **body))["vat"] == vat


# -- what the POST refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"channel_key": None}, "channel_key"),
        ({"channel_key": " "}, "channel_key"),
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"name": {"text": "x"}}, "name"),
        ({"amount": None}, "amount"),
        ({"amount": ""}, "amount"),
        ({"amount": 0}, "amount"),
        ({"amount": -1000}, "amount"),
        ({"amount": 1000.5}, "amount"),
        ({"amount": "1,000"}, "amount"),
        ({"amount": True}, "amount"),
        ({"identifier": None}, "identifier"),
        ({"identifier_type": "passport"}, "identifier_type"),
        ({"type": "corporate"}, "type"),
        ({"product_type": "service"}, "product_type"),
        ({"pay_method": "card"}, "pay_method"),
        ({"tax_free": -1}, "tax_free"),
        ({"tax_free": 12000}, "tax_free"),
        ({"vat_amount": "a lot"}, "vat_amount"),
        ({"vat_amount": 11001}, "vat_amount"),
        ({"buyer_tel": ["010"]}, "buyer_tel"),
        ({"corp_reg_no": {"no": 1}}, "corp_reg_no"),
    ],
)
def test_bad_body_is_400_naming_the_field(
    api: Api, sandbox: Sandbox, merchant_uid: str, body: dict[str, Any], named: str
) -> None:
    """Required fields, enums, amount a whole number > 0, tax_free <= amount; nothing issued."""
    assert named in failure(api.issue_external(merchant_uid, **body), 400)
    assert sandbox.external_issued_count(merchant_uid) == 0
    failure(api.lookup_external(merchant_uid), 404)


@pytest.mark.parametrize("raw", ["{", "[1, 2]"])
def test_unreadable_body_is_400(api: Api, merchant_uid: str, raw: str) -> None:
    """Not JSON, or JSON that is not an object."""
    answer = api.call(
        "POST",
        f"/receipts/external/{merchant_uid}",
        data=raw,
        headers={"Content-Type": "application/json"},
    )
    failure(answer, 400)


def test_tax_service_refusal_is_500(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """The built-in TS1 rule applies as for payments: 11 digits not starting with 0."""
    assert "[TS1]" in failure(api.issue_external(merchant_uid, identifier="12345678901"), 500)
    assert sandbox.external_issued_count(merchant_uid) == 0


def test_already_issued_is_400(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """A second POST while the receipt is active: "already issued", whatever the body."""
    success(api.issue_external(merchant_uid))
    assert failure(api.issue_external(merchant_uid), 400) == ALREADY_ISSUED
    assert failure(api.issue_external(merchant_uid, amount=5000), 400) == ALREADY_ISSUED
    assert sandbox.external_issued_count(merchant_uid) == 1


# -- re-issue after a cancel --------------------------------------------------------------


def test_reissue_is_refused_by_default(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """`refuse`: after the cancel, the same 400 a live receipt gets; the lookup still shows the
    cancelled one."""
    assert sandbox.external_reissue() == "refuse"
    first = success(api.issue_external(merchant_uid))
    success(api.cancel_external(merchant_uid))
    assert failure(api.issue_external(merchant_uid), 400) == ALREADY_ISSUED
    shown = success(api.lookup_external(merchant_uid))
    assert shown["receipt_tid"] == first["receipt_tid"]
    assert shown["cancelled_at"] > 0
    assert sandbox.external_issued_count(merchant_uid) == 1


def test_reissue_when_allowed(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """`allow`: a POST after the cancel issues a new receipt, which the lookup then shows; a
    POST while that one is active is still "already issued"."""
    assert sandbox.set_external_reissue("allow") == {"external_reissue": "allow"}
    first = success(api.issue_external(merchant_uid))
    success(api.cancel_external(merchant_uid))
    second = success(api.issue_external(merchant_uid, amount=5500))
    assert second["receipt_tid"] != first["receipt_tid"]
    assert (second["amount"], second["cancelled_at"]) == (5500, 0)
    assert success(api.lookup_external(merchant_uid)) == second
    assert failure(api.issue_external(merchant_uid), 400) == ALREADY_ISSUED
    assert sandbox.external_issued_count(merchant_uid) == 2
    sandbox.set_external_reissue("refuse")
    success(api.cancel_external(merchant_uid))
    assert failure(api.issue_external(merchant_uid), 400) == ALREADY_ISSUED


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"external_reissue": "maybe"},
        {"external_reissue": True},
        {"external_reissue": "allow", "x": 1},
        ["allow"],
    ],
)
def test_reissue_switch_is_checked(sandbox: Sandbox, body: object) -> None:
    """PUT takes exactly {"external_reissue": "allow"|"refuse"}; a bad body changes nothing."""
    response = requests.put(f"{sandbox.url}/__sandbox__/external/reissue", json=body, timeout=5)
    assert response.status_code == 400
    assert "external_reissue" in response.json()["error"]
    assert sandbox.external_reissue() == "refuse"


def test_cli_flag_sets_the_reissue_default() -> None:
    """`--external-reissue allow` starts in that mode, and a reset returns to it."""
    with running_sandbox("--external-reissue", "allow") as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        success(api.issue_external("order_flag"))
        success(api.cancel_external("order_flag"))
        success(api.issue_external("order_flag"))
        sandbox.set_external_reissue("refuse")
        sandbox.reset()
        assert sandbox.external_reissue() == "allow"


# -- no collision with the payment of the same id -----------------------------------------


@pytest.mark.parametrize("uid", ["same_id", "external:same_id", "iamport-external:same_id"])
def test_external_fault_spares_the_payment_alike(api: Api, sandbox: Sandbox, uid: str) -> None:
    """A step scripted for merchant_uid `uid` is not met by the payment whose imp_uid is `uid`."""
    sandbox.script_external(uid, {"kind": "status", "status": 503})
    assert sandbox.faults()["scripts"] == {}
    assert list(sandbox.faults()["external_scripts"]) == [uid]
    success(api.issue(uid))
    success(api.lookup(uid))
    success(api.payment(uid))
    failure(api.issue_external(uid), 503)
    success(api.issue_external(uid))


@pytest.mark.parametrize("uid", ["same_id", "external:same_id", "iamport-external:same_id"])
def test_payment_fault_spares_the_external_alike(api: Api, sandbox: Sandbox, uid: str) -> None:
    """And the other way round."""
    sandbox.script(uid, {"kind": "status", "status": 503})
    assert sandbox.faults()["external_scripts"] == {}
    success(api.issue_external(uid))
    success(api.lookup_external(uid))
    failure(api.issue(uid), 503)
    success(api.issue(uid))


def test_state_log_and_counts_are_kept_apart(api: Api, sandbox: Sandbox) -> None:
    """One id, both kinds: each has its own receipt, count, log entries and audit figures."""
    uid = "both_kinds"
    paid = success(api.issue(uid))
    sold = success(api.issue_external(uid))
    assert paid["receipt_tid"] != sold["receipt_tid"]
    success(api.cancel_external(uid))
    assert success(api.lookup(uid))["cancelled_at"] == 0
    assert success(api.payment(uid))["cash_receipt_issued"] is True
    view = sandbox.receipts()
    assert (view["issued_counts"], view["external_issued_counts"]) == ({uid: 1}, {uid: 1})
    assert [r["imp_uid"] for r in view["receipts"]] == [uid]
    assert [r["merchant_uid"] for r in view["external_receipts"]] == [uid]
    assert "pg_provider" not in view["external_receipts"][0]
    assert [e["path"] for e in sandbox.requests(uid)] == [
        f"/receipts/{uid}",
        f"/receipts/{uid}",
        f"/payments/{uid}",
    ]
    assert [e["method"] for e in sandbox.external_requests(uid)] == ["POST", "DELETE"]
    audit = sandbox.audit()
    assert audit["payments"][uid]["active"] == 1
    assert audit["external"]["merchant_uids"][uid]["active"] == 0


# -- every fault kind ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [{}, {"script": []}, {"script": [{"kind": "explode"}]}, [1]])
def test_bad_external_script_is_400(sandbox: Sandbox, body: object) -> None:
    """The external script route checks its body as the payment one does; nothing changes."""
    response = requests.post(
        f"{sandbox.url}/__sandbox__/external/faults/order_x", json=body, timeout=5
    )
    assert response.status_code == 400
    assert response.json()["error"]
    assert sandbox.faults()["external_scripts"] == {}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_status_step(api: Api, sandbox: Sandbox, merchant_uid: str, status: int) -> None:
    sandbox.script_external(merchant_uid, {"kind": "status", "status": status})
    failure(api.issue_external(merchant_uid), status)
    assert sandbox.external_issued_count(merchant_uid) == 0
    (entry,) = sandbox.external_requests(merchant_uid)
    assert entry["fault"] == "status"


def test_drop_after_creates_the_receipt(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """The ambiguous case: no answer, yet the receipt exists; a retry meets "already issued"."""
    sandbox.script_external(merchant_uid, {"kind": "drop_after", "method": "POST"})
    with pytest.raises(requests.ConnectionError):
        api.issue_external(merchant_uid)
    assert sandbox.external_issued_count(merchant_uid) == 1
    (entry,) = sandbox.external_requests(merchant_uid)
    assert (entry["status"], entry["outcome"]) == (None, 200)
    assert failure(api.issue_external(merchant_uid), 400) == ALREADY_ISSUED


def test_drop_after_on_cancel_cancels(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    success(api.issue_external(merchant_uid))
    sandbox.script_external(merchant_uid, {"kind": "drop_after", "method": "DELETE"})
    with pytest.raises(requests.ConnectionError):
        api.cancel_external(merchant_uid)
    assert success(api.lookup_external(merchant_uid))["cancelled_at"] > 0


def test_drop_before_does_nothing(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    sandbox.script_external(merchant_uid, {"kind": "drop_before"})
    with pytest.raises(requests.ConnectionError):
        api.issue_external(merchant_uid)
    assert sandbox.external_issued_count(merchant_uid) == 0


def test_hang_outlasts_the_client(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    sandbox.script_external(merchant_uid, {"kind": "hang", "seconds": 2})
    with pytest.raises(requests.ReadTimeout):
        api.call("GET", f"/receipts/external/{merchant_uid}", timeout=0.3)


def test_latency_then_the_work(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """A latency longer than the client waits: the POST is acted on after it gave up."""
    sandbox.script_external(merchant_uid, {"kind": "latency", "ms": 600, "method": "POST"})
    with pytest.raises(requests.ReadTimeout):
        api.call(
            "POST",
            f"/receipts/external/{merchant_uid}",
            json={"channel_key": "c", "name": "n", "amount": 1000, "identifier": "01012345678"},
            timeout=0.2,
        )
    wait_external_posts_processed(sandbox, merchant_uid, timeout=5)
    success(api.lookup_external(merchant_uid))


def test_rate_limit_revoke_garbage_and_answer(
    api: Api, sandbox: Sandbox, merchant_uid: str
) -> None:
    sandbox.script_external(
        merchant_uid,
        {"kind": "rate_limit", "retry_after": 0.1},
        {"kind": "garbage", "status": 200, "body": "<h1>oops</h1>"},
        {"kind": "answer", "status": 408, "body_kind": "empty"},
        {"kind": "revoke_tokens"},
    )
    limited = api.issue_external(merchant_uid)
    failure(limited, 429)
    assert limited.headers["Retry-After"] == "0.1"
    garbage = api.issue_external(merchant_uid)
    assert (garbage.status_code, garbage.text) == (200, "<h1>oops</h1>")
    empty = api.issue_external(merchant_uid)
    assert (empty.status_code, empty.content) == (408, b"")
    failure(api.issue_external(merchant_uid), 401)
    failure(api.issue_external(merchant_uid), 401)
    assert sandbox.external_issued_count(merchant_uid) == 0


def test_reject_passes_the_pg_message(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    sandbox.script_external(
        merchant_uid,
        {"kind": "reject", "message": "PG: 발급 불가"},
        {"kind": "reject", "method": "DELETE", "message": "취소 불가"},
    )
    assert failure(api.issue_external(merchant_uid), 500) == "PG: 발급 불가"
    success(api.issue_external(merchant_uid))
    assert failure(api.cancel_external(merchant_uid), 500) == "취소 불가"
    assert success(api.lookup_external(merchant_uid))["cancelled_at"] == 0


def test_rates_apply(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """Global rates strike external requests too; `reject` only their POST."""
    sandbox.set_rates(rates={"reject": 1.0}, reject_message="거절")
    assert failure(api.issue_external(merchant_uid), 500) == "거절"
    failure(api.lookup_external(merchant_uid), 404)
    sandbox.set_rates(rates={"status_503": 1.0})
    failure(api.lookup_external(merchant_uid), 503)


# -- duplicates and blind requests --------------------------------------------------------


def test_allowed_duplicate_is_a_second_active_receipt(
    api: Api, sandbox: Sandbox, merchant_uid: str
) -> None:
    """Honest mode: the second POST issues; the audit's external section shows the double."""
    sandbox.allow_duplicates()
    first = success(api.issue_external(merchant_uid))
    second = success(api.issue_external(merchant_uid))
    assert first["receipt_tid"] != second["receipt_tid"]
    assert success(api.lookup_external(merchant_uid)) == second
    external = sandbox.audit()["external"]
    assert (external["double_active"], external["receipts_created"]) == ([merchant_uid], 2)
    assert sandbox.audit()["double_active"] == []
    assert success(api.cancel_external(merchant_uid))["receipt_tid"] == second["receipt_tid"]
    shown = success(api.lookup_external(merchant_uid))
    assert (shown["receipt_tid"], shown["cancelled_at"]) == (first["receipt_tid"], 0)
    success(api.cancel_external(merchant_uid))
    assert external_figures(sandbox, merchant_uid) == {
        "created": 2,
        "active": 0,
        "max_active": 2,
        "blind_posts": 0,
        "blind_deletes": 0,
    }


def test_post_after_a_lookup_showing_a_receipt_is_blind(
    api: Api, sandbox: Sandbox, merchant_uid: str
) -> None:
    """Counted in the external section only, and marked in the log."""
    success(api.issue_external(merchant_uid))
    success(api.lookup_external(merchant_uid))
    failure(api.issue_external(merchant_uid), 400)
    assert external_figures(sandbox, merchant_uid)["blind_posts"] == 1
    audit = sandbox.audit()
    assert (audit["external"]["blind_posts"], audit["blind_posts"]) == (1, 0)
    posts = [e for e in sandbox.external_requests(merchant_uid) if e["method"] == "POST"]
    assert [e["blind"] for e in posts] == [False, True]


def test_delete_after_a_lookup_showing_none_is_blind(
    api: Api, sandbox: Sandbox, merchant_uid: str
) -> None:
    failure(api.lookup_external(merchant_uid), 404)
    failure(api.cancel_external(merchant_uid), 404)
    assert external_figures(sandbox, merchant_uid)["blind_deletes"] == 1
    assert sandbox.audit()["blind_deletes"] == 0


def test_a_payment_lookup_tells_nothing_about_the_external_alike(
    api: Api, sandbox: Sandbox
) -> None:
    """The payment `x` shows a receipt; a POST for the external sale `x` is not blind."""
    uid = "told_apart"
    success(api.issue(uid))
    success(api.lookup(uid))
    success(api.issue_external(uid))
    success(api.lookup_external(uid))
    success(api.cancel_external(uid))
    assert external_figures(sandbox, uid)["blind_posts"] == 0
    assert sandbox.audit()["payments"][uid]["blind_posts"] == 0


def test_reissue_after_a_cancel_is_not_blind(api: Api, sandbox: Sandbox, merchant_uid: str) -> None:
    """Look (active), cancel, issue again: the cancel made the lookup stale."""
    sandbox.set_external_reissue("allow")
    success(api.issue_external(merchant_uid))
    success(api.lookup_external(merchant_uid))
    success(api.cancel_external(merchant_uid))
    success(api.issue_external(merchant_uid))
    assert external_figures(sandbox, merchant_uid)["blind_posts"] == 0
