"""PortOne V2 under /portone: each route, its answers' shapes (the OpenAPI schemas), each error
type with its status, the body checks, the store, the login, and the request log."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from tests.sandbox.client import PortOneApi, issue_body, v2_failure, v2_success
from tests.support.sandbox import Sandbox, running_sandbox

RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")
ISSUED_REQUIRED = {
    "status",
    "merchantId",
    "storeId",
    "paymentId",
    "channel",
    "amount",
    "currency",
    "orderName",
    "isManual",
    "issueNumber",
    "issuedAt",
}


def receipt_of(v2: PortOneApi, payment_id: str) -> dict[str, Any]:
    return v2_success(v2.lookup(payment_id))


# -- issue, look up, cancel ------------------------------------------------------------------


def test_issue_answers_a_summary_the_lookup_matches(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """IssueCashReceiptResponse {cashReceipt: {issueNumber, url, pgReceiptId}}, then the
    IssuedCashReceipt the lookup shows, with the body's amounts and VAT at 1/11."""
    body = v2_success(v2.issue(payment_id, amount={"total": 22000, "taxFree": 11000}))
    summary = body["cashReceipt"]
    assert set(body) == {"cashReceipt"}
    assert set(summary) == {"issueNumber", "url", "pgReceiptId"}
    assert re.fullmatch(r"\d{9}", summary["issueNumber"])
    assert requests.get(summary["url"], timeout=5).status_code == 200

    shown = receipt_of(v2, payment_id)
    assert set(shown) >= ISSUED_REQUIRED
    assert shown["status"] == "ISSUED"
    assert (shown["paymentId"], shown["storeId"]) == (payment_id, sandbox.portone_store_id)
    assert (shown["amount"], shown["taxFreeAmount"], shown["vatAmount"]) == (22000, 11000, 1000)
    assert (shown["currency"], shown["type"], shown["isManual"]) == ("KRW", "PERSONAL", True)
    assert (shown["issueNumber"], shown["pgReceiptId"]) == (
        summary["issueNumber"],
        summary["pgReceiptId"],
    )
    assert shown["channel"]["key"] == sandbox.portone_channel_key
    assert {"type", "pgProvider", "pgMerchantId"} <= set(shown["channel"])
    assert RFC3339_UTC.fullmatch(shown["issuedAt"])
    assert "cancelledAt" not in shown
    assert sandbox.portone_issued_count(payment_id) == 1


def test_vat_sent_is_kept(v2: PortOneApi, payment_id: str) -> None:
    v2_success(v2.issue(payment_id, amount={"total": 11000, "vat": 0}, type="CORPORATE"))
    shown = receipt_of(v2, payment_id)
    assert (shown["vatAmount"], shown["type"]) == (0, "CORPORATE")


def test_cancel_then_the_lookup_shows_it_cancelled(v2: PortOneApi, payment_id: str) -> None:
    """CancelCashReceiptResponse {cancelledAmount, cancelledAt}; CancelledCashReceipt after."""
    issued = v2_success(v2.issue(payment_id, amount={"total": 33000}))
    cancelled = v2_success(v2.cancel(payment_id))
    assert set(cancelled) == {"cancelledAmount", "cancelledAt"}
    assert cancelled["cancelledAmount"] == 33000
    assert RFC3339_UTC.fullmatch(cancelled["cancelledAt"])
    shown = receipt_of(v2, payment_id)
    assert (shown["status"], shown["cancelledAt"]) == ("CANCELLED", cancelled["cancelledAt"])
    assert shown["pgReceiptId"] == issued["cashReceipt"]["pgReceiptId"]


def test_lookup_and_cancel_of_a_payment_id_without_receipt(v2: PortOneApi, payment_id: str) -> None:
    """404 CASH_RECEIPT_NOT_FOUND for both; after a cancel, a second cancel is NOT_ISSUED."""
    v2_failure(v2.lookup(payment_id), 404, "CASH_RECEIPT_NOT_FOUND")
    v2_failure(v2.cancel(payment_id), 404, "CASH_RECEIPT_NOT_FOUND")
    v2_success(v2.issue(payment_id))
    v2_success(v2.cancel(payment_id))
    v2_failure(v2.cancel(payment_id), 404, "CASH_RECEIPT_NOT_ISSUED")


def test_second_issue_is_already_issued(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    v2_success(v2.issue(payment_id))
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    assert sandbox.portone_issued_count(payment_id) == 1


def test_unknown_channel_is_404(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    v2_failure(v2.issue(payment_id, channelKey="channel-key-other"), 404, "CHANNEL_NOT_FOUND")
    assert sandbox.portone_issued_count(payment_id) == 0


@pytest.mark.parametrize(
    ("customer", "pg_code"),
    [
        ({"identityNumber": "010-1234-5678"}, "TS1"),
        ({"identityNumber": "12345678901"}, "TS1"),
        ({"identityNumber": "0101234567", "identityNumberType": "BUSINESS"}, None),
        ({"identityNumber": "01012345678", "identityNumberType": "BUSINESS"}, "TS1"),
        ({"identityNumber": "1168200276", "identityNumberType": "BUSINESS"}, None),
        ({"identityNumber": "1234567890123456", "identityNumberType": "CARD"}, None),
    ],
)
def test_the_tax_service_refuses_bad_numbers_as_a_pg_error(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, customer: dict[str, str], pg_code: str | None
) -> None:
    """Digits only (V2 asks for them; hyphens are refused), the NTS rule of i'mport's sandbox:
    502 PG_PROVIDER with pgCode and pgMessage, and an ISSUE_FAILED receipt the lookup shows."""
    answer = v2.issue(payment_id, customer=customer)
    if pg_code is None:
        v2_success(answer)
        return
    body = v2_failure(answer, 502, "PG_PROVIDER")
    assert body["pgCode"] == pg_code
    assert body["pgMessage"]
    failed = receipt_of(v2, payment_id)
    assert failed["status"] == "ISSUE_FAILED"
    assert {"issueNumber", "amount", "issuedAt"}.isdisjoint(failed)
    assert sandbox.portone_issued_count(payment_id) == 0
    # A failed issue takes nothing: the paymentId can be issued, and the lookup then shows that.
    v2_success(v2.issue(payment_id))
    assert receipt_of(v2, payment_id)["status"] == "ISSUED"


# -- what the body must be ------------------------------------------------------------------

BAD_BODIES: list[tuple[dict[str, Any], str]] = [
    ({"paymentId": None}, "paymentId"),
    ({"paymentId": ""}, "paymentId"),
    ({"paymentId": 12}, "paymentId"),
    ({"channelKey": None}, "channelKey"),
    ({"type": None}, "type"),
    ({"type": "person"}, "type"),
    ({"type": "ANONYMOUS"}, "type"),
    ({"orderName": None}, "orderName"),
    ({"orderName": " "}, "orderName"),
    ({"currency": None}, "currency"),
    ({"currency": "WON"}, "currency"),
    ({"currency": "krw"}, "currency"),
    ({"currency": "USD"}, "currency"),
    ({"amount": None}, "amount"),
    ({"amount": 11000}, "amount"),
    ({"amount": {}}, "amount.total"),
    ({"amount": {"total": "11000"}}, "amount.total"),
    ({"amount": {"total": 11000.0}}, "amount.total"),
    ({"amount": {"total": True}}, "amount.total"),
    ({"amount": {"total": 2**63}}, "amount.total"),
    ({"amount": {"total": 0}}, "amount.total"),
    ({"amount": {"total": 11000, "taxFree": -1}}, "amount.taxFree"),
    ({"amount": {"total": 11000, "taxFree": 11001}}, "amount.taxFree"),
    ({"amount": {"total": 11000, "vat": 10001, "taxFree": 1000}}, "amount.vat"),
    ({"productType": "REAL"}, "productType"),
    ({"customer": None}, "customer"),
    ({"customer": {}}, "customer.identityNumber"),
    ({"customer": {"identityNumber": 1012345678}}, "customer.identityNumber"),
    ({"customer": {"identityNumber": "01012345678", "identityNumberType": "PERSON"}}, "Type"),
    ({"customer": {"identityNumber": "01012345678", "email": 1}}, "customer.email"),
    ({"paidAt": "2026-01-02 03:04:05"}, "paidAt"),
    ({"paidAt": "2026-01-02"}, "paidAt"),
    ({"paidAt": "2026-01-02T03:04:05"}, "paidAt"),
    ({"paidAt": 1767322800}, "paidAt"),
    ({"paymentMethod": "CARD"}, "paymentMethod"),
    ({"businessRegistrationNumber": 1168200276}, "businessRegistrationNumber"),
    ({"storeId": 5}, "storeId"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_BODIES)
def test_a_body_the_schema_refuses_is_invalid_request(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, fields: dict[str, Any], named: str
) -> None:
    """Required fields, JSON types, enums, int64, RFC 3339: 400 INVALID_REQUEST naming the field,
    and nothing is issued."""
    assert named in v2_failure(v2.issue(payment_id, **fields), 400, "INVALID_REQUEST")["message"]
    assert sandbox.portone_issued_count(payment_id) == 0


def test_every_field_of_the_schema_is_taken(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """All of IssueCashReceiptBody, and a field the schema does not know, which is ignored."""
    body = issue_body(
        payment_id,
        storeId=sandbox.portone_store_id,
        productType="DIGITAL",
        paidAt="2026-01-02T03:04:05.123+09:00",
        businessRegistrationNumber="1168200276",
        paymentMethod="VIRTUAL_ACCOUNT",
        customer={
            "identityNumber": "01012345678",
            "identityNumberType": "PHONE",
            "name": "홍길동",
            "email": "buyer@example.com",
            "phoneNumber": "01098765432",
        },
        newFieldFromTheFuture={"x": 1},
    )
    v2_success(v2.call("POST", "/cash-receipts", json=body))


@pytest.mark.parametrize("raw", ["", "{", "[1, 2]", '"text"'])
def test_an_unreadable_body_is_invalid_request(v2: PortOneApi, raw: str) -> None:
    answer = v2.call(
        "POST", "/cash-receipts", data=raw, headers={"Content-Type": "application/json"}
    )
    v2_failure(answer, 400, "INVALID_REQUEST")


def test_json_without_a_content_type_is_read(v2: PortOneApi, payment_id: str) -> None:
    """The JS SDK posts its JSON string without a Content-Type (research §6)."""
    answer = v2.call("POST", "/cash-receipts", data=json.dumps(issue_body(payment_id)).encode())
    v2_success(answer)


# -- auth and the store ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "",
        "PortOne",
        "PortOne ",
        "PortOne wrong-secret",
        "portone sandbox_portone_secret",
        "PortOne  sandbox_portone_secret",
        "Bearer sandbox_portone_secret",
        "sandbox_portone_secret",
        "Basic c2FuZGJveA==",
    ],
)
def test_anything_but_the_secret_is_401(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str, auth: str | None
) -> None:
    """On every route: 401 UNAUTHORIZED, and nothing is done."""
    calls = [
        ("POST", "/cash-receipts", {"json": issue_body(payment_id)}),
        ("GET", f"/payments/{payment_id}/cash-receipt", {}),
        ("POST", f"/payments/{payment_id}/cash-receipt/cancel", {}),
        ("GET", "/cash-receipts", {}),
        ("GET", f"/payments/{payment_id}", {}),
    ]
    for method, path, kwargs in calls:
        v2_failure(v2.call(method, path, auth=auth, **kwargs), 401, "UNAUTHORIZED")
    assert sandbox.portone_issued_count(payment_id) == 0


def test_another_store_is_forbidden(v2: PortOneApi, sandbox: Sandbox, payment_id: str) -> None:
    """storeId is optional; the secret's own store is fine, any other is 403 FORBIDDEN."""
    sandbox.seed_portone_payment(payment_id)
    own = sandbox.portone_store_id
    v2_success(v2.issue(payment_id, storeId=own))
    v2_success(v2.lookup(payment_id, storeId=own))
    v2_success(v2.payment(payment_id, storeId=own))
    v2_success(v2.list({"filter": {"storeId": own}}))
    other = "store-00000000-0000-0000-0000-000000000000"
    v2_failure(v2.issue(f"{payment_id}-b", storeId=other), 403, "FORBIDDEN")
    v2_failure(v2.lookup(payment_id, storeId=other), 403, "FORBIDDEN")
    v2_failure(v2.payment(payment_id, storeId=other), 403, "FORBIDDEN")
    v2_failure(v2.cancel(payment_id, storeId=other), 403, "FORBIDDEN")
    v2_failure(v2.list({"filter": {"storeId": other}}), 403, "FORBIDDEN")
    assert receipt_of(v2, payment_id)["status"] == "ISSUED"
    v2_success(v2.cancel(payment_id, storeId=own))


def test_login_gives_a_bearer_token_for_30_minutes(v2: PortOneApi, sandbox: Sandbox) -> None:
    """POST /login/api-secret; the access token works as Bearer until the sandbox clock passes
    30 minutes; a wrong secret is 401, a missing one 400; the log hides the secret."""
    answer = v2.call("POST", "/login/api-secret", auth=None, json={"apiSecret": v2.secret})
    tokens = v2_success(answer)
    assert set(tokens) == {"accessToken", "refreshToken"}
    bearer = f"Bearer {tokens['accessToken']}"
    v2_success(v2.call("GET", "/cash-receipts", auth=bearer))
    sandbox.advance_clock(1801)
    v2_failure(v2.call("GET", "/cash-receipts", auth=bearer), 401, "UNAUTHORIZED")
    v2_failure(
        v2.call("POST", "/login/api-secret", auth=None, json={"apiSecret": "nope"}),
        401,
        "UNAUTHORIZED",
    )
    v2_failure(v2.call("POST", "/login/api-secret", auth=None, json={}), 400, "INVALID_REQUEST")
    assert v2.secret not in str(sandbox.portone_requests())


def test_other_flags_set_the_secret_store_and_channels() -> None:
    """--portone-secret, --portone-store-id and repeated --portone-channel-key."""
    args = (
        "--portone-secret",
        "my-v2-secret",
        "--portone-store-id",
        "store-1234",
        "--portone-channel-key",
        "channel-key-a",
        "--portone-channel-key",
        "channel-key-b",
    )
    with running_sandbox(*args) as sandbox:
        assert (sandbox.portone_secret, sandbox.portone_store_id) == ("my-v2-secret", "store-1234")
        v2 = PortOneApi(sandbox.portone_url, "my-v2-secret")
        v2_success(v2.issue("p-a", channelKey="channel-key-a"))
        v2_success(v2.issue("p-b", channelKey="channel-key-b"))
        v2_failure(v2.issue("p-c"), 404, "CHANNEL_NOT_FOUND")
        assert receipt_of(v2, "p-a")["storeId"] == "store-1234"
        v2_failure(PortOneApi(sandbox.portone_url).lookup("p-a"), 401, "UNAUTHORIZED")


# -- payments -------------------------------------------------------------------------------


def test_an_unseeded_payment_is_not_found(v2: PortOneApi, payment_id: str) -> None:
    """A paymentId is a payment only if seeded; issuing for one needs no payment."""
    v2_failure(v2.payment(payment_id), 404, "PAYMENT_NOT_FOUND")
    v2_success(v2.issue(payment_id))
    v2_failure(v2.payment(payment_id), 404, "PAYMENT_NOT_FOUND")


@pytest.mark.parametrize(
    ("seed", "present", "absent"),
    [
        (
            {"status": "PAID"},
            {"paidAt", "pgTxId", "disputes", "method"},
            {"cancelledAt", "cashReceipt", "cashReceiptIssuanceStatus"},
        ),
        (
            {"status": "PARTIAL_CANCELLED", "amount": {"total": 20000, "cancelled": 5000}},
            {"paidAt", "cancelledAt", "cancellations"},
            {"failedAt"},
        ),
        ({"status": "CANCELLED"}, {"paidAt", "cancelledAt", "cancellations"}, {"disputes"}),
        ({"status": "VIRTUAL_ACCOUNT_ISSUED"}, {"method", "pgTxId"}, {"paidAt", "cashReceipt"}),
        ({"status": "READY"}, set(), {"paidAt", "method"}),
        ({"status": "PAY_PENDING"}, {"pgTxId"}, {"paidAt"}),
        ({"status": "FAILED"}, {"failedAt", "failure"}, {"paidAt"}),
    ],
)
def test_each_payment_status_has_its_variants_fields(
    v2: PortOneApi,
    sandbox: Sandbox,
    payment_id: str,
    seed: dict[str, Any],
    present: set[str],
    absent: set[str],
) -> None:
    """Payment is a oneOf by status; each variant has its own required fields."""
    sandbox.seed_portone_payment(payment_id, **seed)
    payment = v2_success(v2.payment(payment_id))
    common = {"status", "id", "transactionId", "merchantId", "storeId", "version", "requestedAt"}
    common |= {"updatedAt", "statusChangedAt", "orderName", "amount", "currency", "customer"}
    assert common | {"origin"} | present <= set(payment)
    assert absent.isdisjoint(payment)
    assert (payment["status"], payment["id"], payment["version"]) == (
        seed["status"],
        payment_id,
        "V2",
    )
    amount_fields = {"total", "taxFree", "discount", "paid", "cancelled", "cancelledTaxFree"}
    assert amount_fields <= set(payment["amount"])


def test_a_seeded_payment_shows_its_amounts_method_and_receipt(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """Amounts, a transfer, paidAt, a receipt issued at approval (isManual false) and
    cashReceiptIssuanceStatus; the receipt is the lookup's too, and takes the paymentId."""
    sandbox.seed_portone_payment(
        payment_id,
        status="PARTIAL_CANCELLED",
        amount={"total": 30000, "taxFree": 8000, "cancelled": 10000, "cancelledTaxFree": 2000},
        paidAt="2026-01-02T12:00:00+09:00",
        method="TRANSFER",
        cashReceipt={"type": "CORPORATE"},
    )
    payment = v2_success(v2.payment(payment_id))
    assert payment["amount"] == {
        "total": 30000,
        "taxFree": 8000,
        "vat": 2000,
        "supply": 20000,
        "discount": 0,
        "paid": 30000,
        "cancelled": 10000,
        "cancelledTaxFree": 2000,
    }
    assert payment["paidAt"] == "2026-01-02T03:00:00Z"
    assert payment["method"]["type"] == "PaymentMethodTransfer"
    assert payment["cashReceiptIssuanceStatus"] == "ISSUED"
    receipt = payment["cashReceipt"]
    assert (receipt["status"], receipt["type"], receipt["totalAmount"]) == (
        "ISSUED",
        "CORPORATE",
        30000,
    )
    looked = receipt_of(v2, payment_id)
    assert (looked["isManual"], looked["issueNumber"]) == (False, receipt["issueNumber"])
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    v2_success(v2.cancel(payment_id))
    assert v2_success(v2.payment(payment_id))["cashReceipt"]["status"] == "CANCELLED"
    assert v2_success(v2.payment(payment_id))["cashReceiptIssuanceStatus"] == "ISSUED"


def test_issued_at_approval_without_a_receipt(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """cashReceiptIssuanceStatus ISSUED with no cashReceipt ("발행번호 없이 발행여부만"): the
    lookup finds nothing, yet the paymentId is taken."""
    sandbox.seed_portone_payment(payment_id, cashReceiptIssuanceStatus="ISSUED")
    payment = v2_success(v2.payment(payment_id))
    assert (payment["cashReceiptIssuanceStatus"], "cashReceipt" in payment) == ("ISSUED", False)
    v2_failure(v2.lookup(payment_id), 404, "CASH_RECEIPT_NOT_FOUND")
    v2_failure(v2.issue(payment_id), 409, "CASH_RECEIPT_ALREADY_ISSUED")
    sandbox.seed_portone_payment(payment_id, cashReceiptIssuanceStatus="NOT_ISSUED")
    v2_success(v2.issue(payment_id))


def test_a_manual_issue_shows_in_the_payment(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """The payment's cashReceipt is the paymentId's receipt; its issuance status stays as seeded."""
    sandbox.seed_portone_payment(payment_id, cashReceiptIssuanceStatus="NOT_ISSUED")
    v2_success(v2.issue(payment_id))
    payment = v2_success(v2.payment(payment_id))
    assert payment["cashReceipt"]["status"] == "ISSUED"
    assert payment["cashReceiptIssuanceStatus"] == "NOT_ISSUED"
    assert sandbox.portone_payment(payment_id) == payment


@pytest.mark.parametrize(
    "fields",
    [
        {"status": "REFUNDED"},
        {"status": "PAY_PENDIN"},
        {"amount": {"total": -1}},
        {"amount": {"total": 1000, "taxFree": 2000}},
        {"amount": {"sum": 1}},
        {"status": "PARTIAL_CANCELLED", "amount": {"total": 1000, "cancelled": 1000}},
        {"status": "CANCELLED", "amount": {"total": 1000, "cancelled": 10}},
        {"status": "PAID", "amount": {"total": 1000, "cancelled": 10}},
        {"status": "VIRTUAL_ACCOUNT_ISSUED", "method": "TRANSFER"},
        {"method": "CARD"},
        {"paidAt": "yesterday"},
        {"cashReceipt": {"status": "FAILED"}},
        {"cashReceipt": {"totalAmount": "x"}},
        {"cashReceipt": {"colour": "red"}},
        {"status": "READY", "cashReceipt": {}},
        {"cashReceiptIssuanceStatus": "MAYBE"},
        {"colour": "red"},
    ],
)
def test_bad_seeds_are_400_and_change_nothing(
    sandbox: Sandbox, payment_id: str, fields: dict[str, Any]
) -> None:
    sandbox.seed_portone_payment(payment_id, amount={"total": 5000})
    before = sandbox.portone_payment(payment_id)
    response = requests.put(
        f"{sandbox.url}/__sandbox__/portone/payments/{payment_id}", json=fields, timeout=5
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]
    assert sandbox.portone_payment(payment_id) == before
    assert sandbox.portone_receipts()["receipts"] == []


# -- the list ----------------------------------------------------------------------------------


def test_list_filters_by_payment_id_and_pages(v2: PortOneApi, sandbox: Sandbox) -> None:
    """requestBody as a URL-encoded query parameter; newest issue first by default; page
    {number, size, totalCount}; statuses FAILED means ISSUE_FAILED."""
    for index in range(3):
        v2_success(v2.issue(f"list-{index}", orderName=f"주문 {index}"))
        sandbox.advance_clock(1)  # distinct issue times, by the sandbox's own clock
    v2_success(v2.cancel("list-1"))
    v2_failure(v2.issue("list-f", customer={"identityNumber": "0"}), 502, "PG_PROVIDER")

    everything = v2_success(v2.list())
    assert [r["paymentId"] for r in everything["items"]] == ["list-2", "list-1", "list-0"]
    assert everything["page"] == {"number": 0, "size": 10, "totalCount": 3}

    one = v2_success(v2.list({"filter": {"paymentId": "list-1"}}))
    assert [(r["paymentId"], r["status"]) for r in one["items"]] == [("list-1", "CANCELLED")]

    page = v2_success(v2.list({"page": {"number": 1, "size": 2}, "sort": {"order": "ASC"}}))
    assert [r["paymentId"] for r in page["items"]] == ["list-2"]
    assert page["page"] == {"number": 1, "size": 2, "totalCount": 3}

    failed = v2_success(
        v2.list({"filter": {"statuses": ["FAILED"], "timeRangeField": "STATUS_UPDATED_AT"}})
    )
    assert [(r["paymentId"], r["status"]) for r in failed["items"]] == [("list-f", "ISSUE_FAILED")]

    by_name = v2_success(v2.list({"filter": {"orderName": "주문 0", "isManual": True}}))
    assert [r["paymentId"] for r in by_name["items"]] == ["list-0"]
    assert v2_success(v2.list({"filter": {"version": "V1"}}))["items"] == []
    assert v2_success(v2.list({"filter": {"types": ["CORPORATE"]}}))["items"] == []


def test_list_takes_a_get_body_too(v2: PortOneApi, payment_id: str) -> None:
    """For clients that can send a body with GET; the query parameter wins over it."""
    v2_success(v2.issue(payment_id))
    body = {"filter": {"paymentId": payment_id}}
    found = v2_success(v2.call("GET", "/cash-receipts", json=body))
    assert [r["paymentId"] for r in found["items"]] == [payment_id]
    both = v2.call(
        "GET",
        "/cash-receipts",
        json=body,
        params={"requestBody": json.dumps({"filter": {"paymentId": "nobody"}})},
    )
    assert v2_success(both)["items"] == []


def test_list_window_is_the_last_90_days_on_the_sandbox_clock(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    v2_success(v2.issue(payment_id))
    sandbox.advance_clock(91 * 86400)
    assert v2_success(v2.list({"filter": {"paymentId": payment_id}}))["items"] == []
    wide = {"filter": {"paymentId": payment_id, "from": "2000-01-01T00:00:00Z"}}
    assert len(v2_success(v2.list(wide))["items"]) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"page": {"number": -1}},
        {"page": {"size": 0}},
        {"page": {"size": "10"}},
        {"sort": {"by": "PAID_AT"}},
        {"sort": {"order": "desc"}},
        {"filter": {"statuses": ["PAID"]}},
        {"filter": {"statuses": "ISSUED"}},
        {"filter": {"from": "last week"}},
        {"filter": {"isTest": "yes"}},
        {"filter": {"pgProviders": ["INICIS_V3"]}},
        {"filter": {"pgCompanies": ["INICIS_V2"]}},
        {"filter": {"version": "V3"}},
        {"filter": {"types": ["PERSONAL", "COMPANY"]}},
        {"filter": {"timeRangeField": "PAID_AT"}},
        {"filter": []},
        [],
    ],
)
def test_a_list_body_the_schema_refuses_is_invalid_request(v2: PortOneApi, body: Any) -> None:
    v2_failure(v2.list(body), 400, "INVALID_REQUEST")


def test_a_request_body_that_is_not_json_is_invalid_request(v2: PortOneApi) -> None:
    answer = v2.call("GET", "/cash-receipts", params={"requestBody": "{filter"})
    v2_failure(answer, 400, "INVALID_REQUEST")


# -- paths and the log ----------------------------------------------------------------------


def test_payment_ids_travel_url_escaped(v2: PortOneApi, sandbox: Sandbox) -> None:
    """A paymentId with a slash, a space and Korean is one path segment once escaped."""
    payment_id = "주문/2026 01#1"
    v2_success(v2.issue(payment_id))
    assert receipt_of(v2, payment_id)["paymentId"] == payment_id
    v2_success(v2.cancel(payment_id))
    assert [e["paymentId"] for e in sandbox.portone_requests(payment_id)] == [payment_id] * 3


def test_routes_are_only_under_the_prefix(sandbox: Sandbox, payment_id: str) -> None:
    """V2's paths at the root would be i'mport's; V2 lives under /portone only."""
    headers = sandbox.portone_headers()
    response = requests.post(
        f"{sandbox.url}/cash-receipts", json=issue_body(payment_id), headers=headers, timeout=5
    )
    assert response.status_code == 404
    assert sandbox.portone_requests() == []


def test_the_log_masks_numbers_and_keeps_headers(
    v2: PortOneApi, sandbox: Sandbox, payment_id: str
) -> None:
    """Each entry: method, path, paymentId, status, the body with identity and phone numbers
    masked, the headers with the secret hidden, and the Idempotency-Key as sent."""
    customer = {"identityNumber": "01012345678", "phoneNumber": "01098765432"}
    v2_success(v2.issue(payment_id, customer=customer, idempotency_key="key-log-0000000001"))
    v2_success(v2.lookup(payment_id))
    first, second = sandbox.portone_requests(payment_id)
    assert (first["method"], first["path"], first["status"]) == (
        "POST",
        "/portone/cash-receipts",
        200,
    )
    assert first["body"]["customer"] == {
        "identityNumber": "010****5678",
        "phoneNumber": "010****5432",
    }
    assert first["headers"]["Authorization"] == "PortOne ***"
    assert first["headers"]["Idempotency-Key"] == '"key-log-0000000001"'
    assert (first["idempotency_key"], first["idempotency"]) == ('"key-log-0000000001"', "new")
    assert (first["done"], first["blind"]) == (True, False)
    assert (second["method"], second["path"]) == (
        "GET",
        f"/portone/payments/{payment_id}/cash-receipt",
    )
    text = str(sandbox.portone_requests()) + str(sandbox.portone_receipts())
    assert "01012345678" not in text
    assert sandbox.portone_secret not in text
    assert sandbox.requests() == []
