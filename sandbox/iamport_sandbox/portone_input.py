"""PortOne V2 request bodies, checked against the OpenAPI schemas: IssueCashReceiptBody and
GetCashReceiptsBody.

A body the schema refuses (a required field missing, a value of the wrong JSON type, a value
outside its enum, a date-time that is not RFC 3339) is INVALID_REQUEST, naming the field by its
path (`customer.identityNumber`). A few refusals go beyond the schema, as the sandbox's own
reading of what the API must refuse (docs/sandbox.md): blank ids and names, amounts that do not
add up, and a currency other than KRW for a cash receipt. Fields the schema does not know are
ignored, as PortOne's backward-compatibility policy lets new fields appear.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

from iamport_sandbox import portone_rules as v2
from iamport_sandbox.portone_rules import Failure

INT64_MAX: Final = 2**63 - 1
INT32_MAX: Final = 2**31 - 1
DEFAULT_PAGE_SIZE: Final = 10
# The default range of a list: until now, from 90 days before `until` (CashReceiptFilterInput).
DEFAULT_RANGE_SECONDS: Final = 90 * 86400


def invalid(message: str) -> Failure:
    return Failure("INVALID_REQUEST", message)


def read_json(raw: bytes | str, where: str = "요청 본문") -> Any:
    """A JSON document, or INVALID_REQUEST."""
    try:
        return json.loads(raw)
    except ValueError:
        raise invalid(f"{where}이 올바른 JSON이 아닙니다. (invalid JSON)") from None


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise invalid(f"{path}은(는) 객체여야 합니다. (must be an object)")
    return value


def _present(body: Mapping[str, Any], name: str, path: str, required: bool) -> Any:
    value = body.get(name)
    if value is None and required:
        raise invalid(f"{path}은(는) 필수입니다. (required)")
    return value


def _string(
    body: Mapping[str, Any], name: str, path: str, *, required: bool = False, blank: bool = True
) -> str | None:
    value = _present(body, name, path, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{path}은(는) 문자열이어야 합니다. (must be a string)")
    if not blank and not value.strip():
        raise invalid(f"{path}은(는) 비어 있을 수 없습니다. (must not be blank)")
    return value


def _integer(
    body: Mapping[str, Any], name: str, path: str, *, required: bool = False, top: int = INT64_MAX
) -> int | None:
    value = _present(body, name, path, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not -top - 1 <= value <= top:
        raise invalid(f"{path}은(는) 정수여야 합니다. (must be an integer, got {value!r})")
    return value


def _boolean(body: Mapping[str, Any], name: str, path: str) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise invalid(f"{path}은(는) true 또는 false여야 합니다. (must be a boolean)")
    return value


def _enum(
    body: Mapping[str, Any],
    name: str,
    path: str,
    allowed: Collection[str],
    *,
    required: bool = False,
) -> str | None:
    value = _string(body, name, path, required=required)
    if value is not None and value not in allowed:
        shown = ", ".join(sorted(allowed)) if len(allowed) <= 8 else "the spec's enum"
        raise invalid(f"{path}의 값 {value!r}은(는) 허용되지 않습니다. (one of {shown})")
    return value


def _enums(
    body: Mapping[str, Any], name: str, path: str, allowed: Collection[str]
) -> frozenset[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid(f"{path}은(는) 배열이어야 합니다. (must be an array)")
    return frozenset(
        str(_enum({name: item}, name, f"{path}[{index}]", allowed, required=True))
        for index, item in enumerate(value)
    )


def _date_time(body: Mapping[str, Any], name: str, path: str) -> float | None:
    text = _string(body, name, path)
    if text is None:
        return None
    try:
        return v2.parse_date_time(text)
    except ValueError:
        raise invalid(
            f"{path}은(는) RFC 3339 date-time이어야 합니다. (e.g. 2026-01-02T03:04:05+09:00, "
            f"got {text!r})"
        ) from None


@dataclass(frozen=True)
class IssueBody:
    """IssueCashReceiptBody, checked."""

    store_id: str | None
    payment_id: str
    channel_key: str
    type: str
    order_name: str
    currency: str
    total: int
    tax_free: int
    vat: int | None
    product_type: str | None
    identity_number: str
    identity_number_type: str | None
    paid_at: float | None


def payment_id_of(body: Any) -> str | None:
    """The paymentId a body names, if it names one: what its faults and audit go by."""
    if isinstance(body, dict) and isinstance(body.get("paymentId"), str):
        return str(body["paymentId"])
    return None


def parse_issue(raw: Any) -> IssueBody:
    """POST /cash-receipts: every field of IssueCashReceiptBody, in the schema's order."""
    body = _object(raw, "요청 본문")
    store_id = _string(body, "storeId", "storeId")
    payment_id = _string(body, "paymentId", "paymentId", required=True, blank=False)
    channel_key = _string(body, "channelKey", "channelKey", required=True, blank=False)
    receipt_type = _enum(body, "type", "type", v2.CASH_RECEIPT_TYPES, required=True)
    order_name = _string(body, "orderName", "orderName", required=True, blank=False)
    currency = _enum(body, "currency", "currency", v2.CURRENCIES, required=True)
    amount = _object(_present(body, "amount", "amount", True), "amount")
    total = _integer(amount, "total", "amount.total", required=True)
    tax_free = _integer(amount, "taxFree", "amount.taxFree")
    vat = _integer(amount, "vat", "amount.vat")
    product_type = _enum(body, "productType", "productType", v2.PRODUCT_TYPES)
    customer = _object(_present(body, "customer", "customer", True), "customer")
    identity_number = _string(
        customer, "identityNumber", "customer.identityNumber", required=True, blank=False
    )
    identity_type = _enum(
        customer, "identityNumberType", "customer.identityNumberType", v2.IDENTITY_NUMBER_TYPES
    )
    for name in ("name", "email", "phoneNumber"):
        _string(customer, name, f"customer.{name}")
    paid_at = _date_time(body, "paidAt", "paidAt")
    _string(body, "businessRegistrationNumber", "businessRegistrationNumber")
    _enum(body, "paymentMethod", "paymentMethod", v2.ISSUE_PAYMENT_METHODS)
    assert payment_id is not None and channel_key is not None and receipt_type is not None
    assert order_name is not None and currency is not None and total is not None
    assert identity_number is not None
    tax_free = tax_free or 0
    _check_amounts(total, tax_free, vat)
    if currency != "KRW":
        raise invalid(f"현금영수증은 KRW로만 발급할 수 있습니다. (currency {currency})")
    return IssueBody(
        store_id=store_id,
        payment_id=payment_id,
        channel_key=channel_key,
        type=receipt_type,
        order_name=order_name,
        currency=currency,
        total=total,
        tax_free=tax_free,
        vat=vat,
        product_type=product_type,
        identity_number=identity_number,
        identity_number_type=identity_type,
        paid_at=paid_at,
    )


def _check_amounts(total: int, tax_free: int, vat: int | None) -> None:
    if total <= 0:
        raise invalid(f"amount.total은(는) 0보다 커야 합니다. (got {total})")
    if not 0 <= tax_free <= total:
        raise invalid(f"amount.taxFree는 0 이상 amount.total 이하여야 합니다. (got {tax_free})")
    if vat is not None and not 0 <= vat <= total - tax_free:
        raise invalid(f"amount.vat는 0 이상 과세금액(total - taxFree) 이하여야 합니다. (got {vat})")


@dataclass(frozen=True)
class ListQuery:
    """GetCashReceiptsBody, checked, with the schema's defaults filled in."""

    page_number: int = 0
    page_size: int = DEFAULT_PAGE_SIZE
    sort_by: str = "ISSUED_AT"
    sort_order: str = "DESC"
    store_id: str | None = None
    time_range_field: str = "ISSUED_AT"
    since: float | None = None
    until: float | None = None
    payment_id: str | None = None
    is_test: bool | None = None
    order_name: str | None = None
    statuses: frozenset[str] | None = None
    is_manual: bool | None = None
    pg_receipt_id: str | None = None
    pg_merchant_id: str | None = None
    pg_providers: frozenset[str] | None = None
    pg_companies: frozenset[str] | None = None
    version: str | None = None
    types: frozenset[str] | None = None

    def window(self, now: float) -> tuple[float, float]:
        """[from, until]: until defaults to now, from to 90 days before until."""
        until = now if self.until is None else self.until
        since = until - DEFAULT_RANGE_SECONDS if self.since is None else self.since
        return since, until


def parse_list(raw: Any) -> ListQuery:
    """GET /cash-receipts: page, sort and filter, each optional."""
    if raw is None:
        return ListQuery()
    body = _object(raw, "요청 본문")
    page, sort, found = (
        _object({} if body.get(name) is None else body[name], name)
        for name in ("page", "sort", "filter")
    )
    number = _integer(page, "number", "page.number", top=INT32_MAX)
    size = _integer(page, "size", "page.size", top=INT32_MAX)
    if number is not None and number < 0:
        raise invalid(f"page.number는 0 이상이어야 합니다. (got {number})")
    if size is not None and size < 1:
        raise invalid(f"page.size는 1 이상이어야 합니다. (got {size})")
    statuses = _enums(found, "statuses", "filter.statuses", v2.FILTER_STATUSES)
    return ListQuery(
        page_number=number or 0,
        page_size=size or DEFAULT_PAGE_SIZE,
        sort_by=_enum(sort, "by", "sort.by", v2.SORT_FIELDS) or "ISSUED_AT",
        sort_order=_enum(sort, "order", "sort.order", v2.SORT_ORDERS) or "DESC",
        store_id=_string(found, "storeId", "filter.storeId"),
        time_range_field=_enum(found, "timeRangeField", "filter.timeRangeField", v2.SORT_FIELDS)
        or "ISSUED_AT",
        since=_date_time(found, "from", "filter.from"),
        until=_date_time(found, "until", "filter.until"),
        payment_id=_string(found, "paymentId", "filter.paymentId"),
        is_test=_boolean(found, "isTest", "filter.isTest"),
        order_name=_string(found, "orderName", "filter.orderName"),
        statuses=None if statuses is None else frozenset(v2.FILTER_STATUSES[s] for s in statuses),
        is_manual=_boolean(found, "isManual", "filter.isManual"),
        pg_receipt_id=_string(found, "pgReceiptId", "filter.pgReceiptId"),
        pg_merchant_id=_string(found, "pgMerchantId", "filter.pgMerchantId"),
        pg_providers=_enums(found, "pgProviders", "filter.pgProviders", v2.PG_PROVIDERS),
        pg_companies=_enums(found, "pgCompanies", "filter.pgCompanies", v2.PG_COMPANIES),
        version=_enum(found, "version", "filter.version", v2.VERSIONS),
        types=_enums(found, "types", "filter.types", v2.CASH_RECEIPT_TYPES),
    )


def parse_login(raw: Any) -> str:
    """POST /login/api-secret: LoginViaApiSecretBody's `apiSecret`."""
    secret = _string(_object(raw, "요청 본문"), "apiSecret", "apiSecret", required=True)
    assert secret is not None
    return secret
