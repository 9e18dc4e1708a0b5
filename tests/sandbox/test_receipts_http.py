"""GET /payments and the three /receipts endpoints: statuses, envelopes, per-PG rules."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.sandbox.client import Api, failure, success
from tests.support.sandbox import Sandbox
from tests.support.spec import RECEIPT_FIELDS


def test_unknown_payment_is_a_paid_vbank_default(api: Api, imp_uid: str) -> None:
    """Any imp_uid is a paid vbank payment of 11,000 KRW on html5_inicis, stable across reads."""
    payment = success(api.payment(imp_uid))
    assert payment["imp_uid"] == imp_uid
    assert payment["merchant_uid"] == f"merchant_{imp_uid}"
    expected = {
        "pay_method": "vbank",
        "pg_provider": "html5_inicis",
        "status": "paid",
        "amount": 11000,
        "cancel_amount": 0,
        "currency": "KRW",
        "cash_receipt_issued": False,
        "sandbox": True,
    }
    assert {key: payment[key] for key in expected} == expected
    assert payment["paid_at"] > 0
    assert success(api.payment(imp_uid)) == payment


def test_include_sandbox_query_is_accepted(api: Api, imp_uid: str) -> None:
    """`?include_sandbox=true`, which real test-channel lookups need, changes nothing."""
    assert success(api.call("GET", f"/payments/{imp_uid}?include_sandbox=true"))["status"] == "paid"


def test_seeded_payment_is_what_lookups_show(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """Admin-seeded fields come back from GET /payments."""
    sandbox.seed_payment(
        imp_uid, merchant_uid="order-1", pay_method="trans", pg_provider="kcp", amount=5000
    )
    payment = success(api.payment(imp_uid))
    assert (payment["merchant_uid"], payment["pay_method"], payment["pg_provider"]) == (
        "order-1",
        "trans",
        "kcp",
    )
    assert payment["amount"] == 5000


def test_issue_answers_the_full_annotation(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """POST issues: every ReceiptAnnotation field, amount 11000, VAT 1000, cancelled_at 0."""
    receipt = success(api.issue(imp_uid, identifier="01012345678"))
    assert set(receipt) == RECEIPT_FIELDS
    assert receipt["imp_uid"] == imp_uid
    assert receipt["receipt_tid"].startswith("SBX-RCT-")
    assert len(receipt["apply_num"]) == 9
    assert receipt["apply_num"].isdigit()
    assert (receipt["type"], receipt["amount"], receipt["vat"]) == ("person", 11000, 1000)
    assert receipt["applied_at"] > 0
    assert receipt["cancelled_at"] == 0
    assert receipt["receipt_url"].startswith(sandbox.url)
    assert requests.get(receipt["receipt_url"], timeout=5).status_code == 200
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True


def test_issue_takes_every_spec_field_as_a_form(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A form body with every request field of the spec issues; values reach the admin view."""
    form = {
        "identifier": "1168200276",
        "identifier_type": "business",
        "type": "company",
        "company_tel": "0212345678",
        "company_name": "샌드박스",
        "corp_reg_no": "1168200276",
        "buyer_name": "홍길동",
        "buyer_email": "buyer@example.com",
        "buyer_tel": "01098765432",
        "tax_free": "1100",
    }
    receipt = success(api.call("POST", f"/receipts/{imp_uid}", data=form))
    assert (receipt["type"], receipt["amount"], receipt["vat"]) == ("company", 11000, 900)
    seen = sandbox.receipts()["receipts"][0]["request"]
    assert seen["identifier"] == "116***0276"
    assert seen["buyer_tel"] == "010****5432"
    assert seen["company_name"] == "샌드박스"


@pytest.mark.parametrize(
    ("amount", "cancel_amount", "tax_free", "receipt_amount", "vat"),
    [
        (11000, 0, 0, 11000, 1000),
        (33000, 11000, 0, 22000, 2000),
        (10005, 0, 0, 10005, 909),
        (20000, 0, 9000, 20000, 1000),
        (11000, 0, 11000, 11000, 0),
    ],
)
def test_amount_and_vat(
    api: Api,
    sandbox: Sandbox,
    imp_uid: str,
    amount: int,
    cancel_amount: int,
    tax_free: int,
    receipt_amount: int,
    vat: int,
) -> None:
    """Amount = paid minus cancelled; VAT = floor((amount - tax_free) / 11)."""
    sandbox.seed_payment(imp_uid, amount=amount, cancel_amount=cancel_amount)
    receipt = success(api.issue(imp_uid, tax_free=tax_free))
    assert (receipt["amount"], receipt["vat"]) == (receipt_amount, vat)


def test_explicit_vat_amount_is_used(api: Api, imp_uid: str) -> None:
    """vat_amount (VAT-designation merchants) replaces the 1/11 rule."""
    assert success(api.issue(imp_uid, vat_amount=0))["vat"] == 0


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"identifier": ""}, "identifier"),
        ({"identifier": "   "}, "identifier"),
        ({"identifier": None}, "identifier"),
        ({"tax_free": -1}, "tax_free"),
        ({"tax_free": "a lot"}, "tax_free"),
        ({"tax_free": 11001}, "tax_free"),
        ({"type": "friend"}, "type"),
        ({"identifier_type": "email"}, "identifier_type"),
        ({"vat_amount": 20000}, "vat_amount"),
    ],
)
def test_bad_request_bodies_are_400(
    api: Api, sandbox: Sandbox, imp_uid: str, body: dict[str, Any], words: str
) -> None:
    """Missing identifier or malformed fields: 400 naming the field, nothing issued."""
    response = api.call("POST", f"/receipts/{imp_uid}", json={"identifier": "01012345678", **body})
    assert words in failure(response, 400)
    assert sandbox.issued_count(imp_uid) == 0


def test_empty_and_invalid_json_bodies_are_400(api: Api, imp_uid: str) -> None:
    """No body, broken JSON, or a JSON list: 400."""
    failure(api.call("POST", f"/receipts/{imp_uid}"), 400)
    headers = {"Content-Type": "application/json"}
    failure(api.call("POST", f"/receipts/{imp_uid}", data="{", headers=headers), 400)
    failure(api.call("POST", f"/receipts/{imp_uid}", data="[]", headers=headers), 400)


@pytest.mark.parametrize("status", ["ready", "cancelled", "failed"])
def test_unpaid_payment_is_400(api: Api, sandbox: Sandbox, imp_uid: str, status: str) -> None:
    """Only a `paid` payment gets a receipt."""
    sandbox.seed_payment(imp_uid, status=status)
    assert "paid" in failure(api.issue(imp_uid), 400)


@pytest.mark.parametrize("pay_method", ["card", "phone", "kakaopay"])
def test_non_cash_payment_is_400(api: Api, sandbox: Sandbox, imp_uid: str, pay_method: str) -> None:
    """Only vbank and trans payments get a receipt."""
    sandbox.seed_payment(imp_uid, pay_method=pay_method)
    assert "vbank" in failure(api.issue(imp_uid), 400)


def test_bank_transfer_is_issued(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A trans payment is a cash payment too."""
    sandbox.seed_payment(imp_uid, pay_method="trans")
    success(api.issue(imp_uid))


def test_second_issue_is_400_already_issued(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """One active receipt per payment: the second POST is 400 and issues nothing."""
    success(api.issue(imp_uid))
    assert "이미" in failure(api.issue(imp_uid), 400)
    assert sandbox.issued_count(imp_uid) == 1


def test_tax_service_rejection_is_500(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """An 11-digit number not starting with 0 is refused by the tax service: 500 with TS1."""
    message = failure(api.issue(imp_uid, identifier="12345678901"), 500)
    assert "[TS1]" in message
    assert "발행에 실패" in message
    assert sandbox.issued_count(imp_uid) == 0
    failure(api.lookup(imp_uid), 404)


@pytest.mark.parametrize("pg", ["payco", "uplus", "danal", "kakaopay"])
def test_pg_without_receipt_support_is_501(
    api: Api, sandbox: Sandbox, imp_uid: str, pg: str
) -> None:
    """POST on a PG outside the spec's issue list is 501."""
    sandbox.seed_payment(imp_uid, pg_provider=pg)
    assert pg in failure(api.issue(imp_uid), 501)


@pytest.mark.parametrize(
    ("pg", "fields"),
    [
        ("kicc", {"identifier_type": "phone"}),
        ("settle", {"identifier_type": "phone"}),
        ("nice_v2", {"identifier_type": "phone", "type": "person"}),
        (
            "daou",
            {"company_tel": "0212345678", "company_name": "샌드박스", "corp_reg_no": "1168200276"},
        ),
        ("ksnet", {"buyer_name": "홍길동", "product_type": "real"}),
        ("smartro_v2", {"type": "person", "buyer_name": "홍길동", "buyer_tel": "01012345678"}),
        ("welcome", {"type": "person", "corp_reg_no": "1168200276", "buyer_tel": "01012345678"}),
    ],
)
def test_pg_required_fields(
    api: Api, sandbox: Sandbox, imp_uid: str, pg: str, fields: dict[str, str]
) -> None:
    """Each required field of a PG, left out alone, is 400; with all of them it issues."""
    sandbox.seed_payment(imp_uid, pg_provider=pg)
    for name in fields:
        partial = {key: value for key, value in fields.items() if key != name}
        assert name in failure(api.issue(imp_uid, **partial), 400)
    success(api.issue(imp_uid, **fields))


def test_nice_v2_refuses_card_numbers(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """nice_v2 cannot issue to a cash-receipt card number through the API."""
    sandbox.seed_payment(imp_uid, pg_provider="nice_v2")
    response = api.issue(
        imp_uid, identifier="123456789012345678", identifier_type="taxcard", type="person"
    )
    assert "taxcard" in failure(response, 400)


def test_lookup_without_receipt_is_404(api: Api, imp_uid: str) -> None:
    """GET /receipts on a payment with no receipt is 404."""
    failure(api.lookup(imp_uid), 404)


def test_lookup_returns_the_issued_receipt(api: Api, imp_uid: str) -> None:
    """GET /receipts answers what POST issued."""
    issued = success(api.issue(imp_uid))
    assert success(api.lookup(imp_uid)) == issued


@pytest.mark.parametrize("pg", ["kicc", "settle"])
def test_lookup_cannot_see_kicc_or_settle(
    api: Api, sandbox: Sandbox, imp_uid: str, pg: str
) -> None:
    """kicc/settle receipts exist yet GET says 404; only the payment's flag tells the truth."""
    sandbox.seed_payment(imp_uid, pg_provider=pg)
    success(api.issue(imp_uid, identifier_type="phone"))
    failure(api.lookup(imp_uid), 404)
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True
    assert sandbox.issued_count(imp_uid) == 1


def test_cancel_then_issue_again(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """DELETE sets cancelled_at, clears cash_receipt_issued, and allows a new receipt."""
    issued = success(api.issue(imp_uid))
    cancelled = success(api.cancel(imp_uid))
    assert cancelled["receipt_tid"] == issued["receipt_tid"]
    assert cancelled["cancelled_at"] >= issued["applied_at"]
    assert cancelled["cancelled_at"] > 0
    assert success(api.lookup(imp_uid)) == cancelled
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is False
    failure(api.cancel(imp_uid), 400)
    again = success(api.issue(imp_uid))
    assert again["receipt_tid"] != issued["receipt_tid"]
    assert again["cancelled_at"] == 0
    assert sandbox.issued_count(imp_uid) == 2
    assert len(sandbox.receipts()["receipts"]) == 2


def test_cancel_without_receipt_is_400(api: Api, imp_uid: str) -> None:
    """DELETE with nothing issued is 400, as the spec says."""
    failure(api.cancel(imp_uid), 400)


@pytest.mark.parametrize("pg", ["kicc", "smartro", "payco"])
def test_cancel_on_pg_without_cancel_support_is_501(
    api: Api, sandbox: Sandbox, imp_uid: str, pg: str
) -> None:
    """DELETE on a PG outside the spec's cancel list is 501, receipt or not."""
    sandbox.seed_payment(imp_uid, pg_provider=pg)
    if pg != "payco":
        success(api.issue(imp_uid, identifier_type="phone"))
    failure(api.cancel(imp_uid), 501)


def test_unknown_route_is_404(api: Api) -> None:
    """Paths i'mport does not have are 404."""
    assert api.call("GET", "/receipts/external/x/y").status_code == 404
