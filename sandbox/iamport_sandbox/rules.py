"""Business rules of i'mport's cash-receipt API, kept free of HTTP so tests can pin them as tables.

Every table here comes from the official V1 OpenAPI (`x-portone-supported-pgs`,
`x-portone-per-pg`) as summarised in shared/research/iamport-api.md. Where the spec is
silent, the choice is marked UNVERIFIED and explained in docs/sandbox.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

# PGs whose payments POST /receipts/{imp_uid} can issue for; any other PG answers 501.
ISSUE_PGS: Final = frozenset(
    {
        "html5_inicis",
        "kcp",
        "nice",
        "kicc",
        "settle",
        "daou",
        "tosspayments",
        "ksnet",
        "smartro",
        "smartro_v2",
        "nice_v2",
        "welcome",
    }
)

# PGs for which GET /receipts/{imp_uid} can confirm a receipt. kicc and settle are missing on
# purpose: the spec leaves them out, so a lookup "cannot confirm" a receipt and answers 404.
LOOKUP_PGS: Final = frozenset(
    {
        "nice",
        "daou",
        "html5_inicis",
        "kcp",
        "payco",
        "smartro",
        "uplus",
        "tosspayments",
        "ksnet",
        "smartro_v2",
        "nice_v2",
        "welcome",
    }
)

# PGs whose receipts DELETE /receipts/{imp_uid} can cancel; any other PG answers 501.
CANCEL_PGS: Final = frozenset(
    {
        "html5_inicis",
        "kcp",
        "settle",
        "nice",
        "daou",
        "tosspayments",
        "nice_v2",
        "ksnet",
        "smartro_v2",
        "welcome",
    }
)

# Fields a PG cannot issue without, beyond `identifier` (which every PG needs).
PG_REQUIRED_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "kicc": ("identifier_type",),
    "settle": ("identifier_type",),
    "nice_v2": ("identifier_type", "type"),
    "daou": ("company_tel", "company_name", "corp_reg_no"),
    "smartro_v2": ("type", "buyer_name", "buyer_tel"),
    "welcome": ("type", "corp_reg_no", "buyer_tel"),
    "ksnet": ("buyer_name", "product_type"),
}

CASH_PAY_METHODS: Final = frozenset({"vbank", "trans"})
IDENTIFIER_TYPES: Final = frozenset({"person", "business", "phone", "taxcard"})
RECEIPT_TYPES: Final = frozenset({"person", "company"})
PRODUCT_TYPES: Final = frozenset({"real", "digital"})
PAYMENT_STATUSES: Final = frozenset({"ready", "paid", "cancelled", "failed"})

# Fields that identify a person; they never reach the request log or the process log in clear.
# i'mport's names, then PortOne V2's (customer.identityNumber, customer.phoneNumber).
MASKED_FIELDS: Final = frozenset({"identifier", "buyer_tel", "identityNumber", "phoneNumber"})
SECRET_FIELDS: Final = frozenset({"imp_secret", "apiSecret"})

TS1_MESSAGE: Final = "[TS1] 발행 요청 번호 오류"


def vat_for(amount: int, tax_free: int) -> int:
    """VAT is 1/11 of the taxable part, floored.

    The spec says "1/11 of the issued amount is applied automatically as VAT" and is silent on
    rounding (UNVERIFIED). Flooring never overstates the tax the buyer paid, and it is the rule
    Korean vendors document for ÷11, so 10005 gives 909, not 910.
    """
    return (amount - tax_free) // 11


def normalise_identifier(identifier: str) -> str:
    """Hyphens and spaces are how people write these numbers, not part of them (UNVERIFIED)."""
    return identifier.replace("-", "").replace(" ", "")


_TYPE_LENGTHS: Final[Mapping[str, range]] = {
    "phone": range(10, 12),
    "business": range(10, 11),
    "person": range(13, 14),
    "taxcard": range(13, 20),
}


def identifier_rejection(identifier: str, identifier_type: str | None = None) -> str | None:
    """Return the tax service's rejection text, or None when it would accept the number.

    This mirrors the NTS "TS1 발행 요청 번호 오류" rule (research §4.2) widened to 19 digits so
    cash-receipt cards pass: digits only, 10-19 long, and an 11-digit number must be a mobile
    number (start with 0). When the caller states `identifier_type`, the length must fit it too,
    because KICC, Settlebank and NICE v2 pass that type to the tax service as given.
    """
    digits = normalise_identifier(identifier)
    if not digits.isdigit() or not 10 <= len(digits) <= 19:
        return TS1_MESSAGE
    if len(digits) == 11 and not digits.startswith("0"):
        return TS1_MESSAGE
    if identifier_type is not None:
        lengths = _TYPE_LENGTHS.get(identifier_type)
        if lengths is not None and len(digits) not in lengths:
            return f"{TS1_MESSAGE} (identifier_type={identifier_type})"
        if identifier_type == "phone" and not digits.startswith("01"):
            return f"{TS1_MESSAGE} (identifier_type=phone)"
    return None


def missing_pg_fields(pg_provider: str, params: Mapping[str, Any]) -> list[str]:
    """List the PG-specific fields that are absent or blank, in the spec's order."""
    return [
        name
        for name in PG_REQUIRED_FIELDS.get(pg_provider, ())
        if not str(params.get(name) or "").strip()
    ]


def mask(value: str) -> str:
    """Keep just enough of a number to tell two apart in a log: first 3 and last 4 characters.

    Values shorter than 10 would reveal most of themselves that way, so they are starred whole.
    """
    if len(value) < 10:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def mask_fields(body: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a request body with personal numbers masked and secrets hidden, for logs; objects
    within it (V2's `customer`) too."""
    masked: dict[str, Any] = {}
    for key, value in body.items():
        if key in SECRET_FIELDS:
            masked[key] = "***"
        elif key in MASKED_FIELDS and value is not None:
            masked[key] = mask(str(value))
        elif isinstance(value, Mapping):
            masked[key] = mask_fields(value)
        else:
            masked[key] = value
    return masked
