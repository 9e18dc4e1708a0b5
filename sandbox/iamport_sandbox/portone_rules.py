"""PortOne V2's vocabulary: its enums, its error types and their statuses, its timestamps.

Everything here is read from PortOne's OpenAPI file (`src/schema/v2.openapi.json` in
portone-io/developers.portone.io, "PortOne API" 1.16.0; research portone-v2-and-webhooks.md §2),
except what is marked as the sandbox's own.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from http import HTTPStatus
from typing import Any, Final

from iamport_sandbox.state import Reply

# -- enums (components.schemas) ---------------------------------------------------------------

CASH_RECEIPT_TYPES: Final = frozenset({"PERSONAL", "CORPORATE"})
PRODUCT_TYPES: Final = frozenset({"PHYSICAL", "DIGITAL"})
IDENTITY_NUMBER_TYPES: Final = frozenset({"PHONE", "CARD", "BUSINESS"})
ISSUE_PAYMENT_METHODS: Final = frozenset({"TRANSFER", "VIRTUAL_ACCOUNT"})
# CashReceipt's discriminator; the list filter's CashReceiptStatus says FAILED for ISSUE_FAILED.
ISSUED: Final = "ISSUED"
CANCELLED: Final = "CANCELLED"
ISSUE_FAILED: Final = "ISSUE_FAILED"
FILTER_STATUSES: Final[Mapping[str, str]] = {
    "ISSUED": ISSUED,
    "CANCELLED": CANCELLED,
    "FAILED": ISSUE_FAILED,
}
SORT_FIELDS: Final = frozenset({"ISSUED_AT", "CANCELLED_AT", "STATUS_UPDATED_AT"})
SORT_ORDERS: Final = frozenset({"DESC", "ASC"})
VERSIONS: Final = frozenset({"V1", "V2"})
PAYMENT_STATUSES: Final = frozenset(
    {
        "READY",
        "PAY_PENDING",
        "VIRTUAL_ACCOUNT_ISSUED",
        "PAID",
        "FAILED",
        "PARTIAL_CANCELLED",
        "CANCELLED",
    }
)
ISSUANCE_STATUSES: Final = frozenset({"ISSUED", "NOT_ISSUED"})
# The payment methods a seeded payment may have: the two a cash receipt is for.
PAYMENT_METHODS: Final[Mapping[str, str]] = {
    "VIRTUAL_ACCOUNT": "PaymentMethodVirtualAccount",
    "TRANSFER": "PaymentMethodTransfer",
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


CURRENCIES: Final = _words(
    """
    KRW USD JPY AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV
    BRL BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK
    DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HRK HTG HUF IDR ILS
    INR IQD IRR ISK JMD JOD KES KGS KHR KMF KPW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA
    MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP
    PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP
    SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USN UYI UYU UYW UZS VED VES VND VUV WST XAF
    XAG XAU XBA XBB XBC XBD XCD XDR XOF XPD XPF XPT XSU XTS XUA XXX YER ZAR ZMW ZWL
    """
)

PG_PROVIDERS: Final = _words(
    """
    HTML5_INICIS PAYPAL PAYPAL_V2 INICIS DANAL NICE DANAL_TPAY JTNET UPLUS NAVERPAY KAKAO SETTLE
    KCP MOBILIANS KAKAOPAY NAVERCO SYRUP KICC EXIMBAY SMILEPAY PAYCO KCP_BILLING ALIPAY PAYPLE
    CHAI BLUEWALNUT SMARTRO SMARTRO_V2 PAYMENTWALL TOSSPAYMENTS KCP_QUICK DAOU GALAXIA TOSSPAY
    KCP_DIRECT SETTLE_ACC SETTLE_FIRM INICIS_UNIFIED KSNET PINPAY NICE_V2 TOSS_BRANDPAY WELCOME
    TOSSPAY_V2 INICIS_V2 KPN KCP_V2 HYPHEN EXIMBAY_V2 INICIS_JP PAYLETTER_GLOBAL MOBILIANS_V2
    TRIPLE_A KICC_V2 INNOPAY HECTO_GLOBAL
    """
)

PG_COMPANIES: Final = _words(
    """
    INICIS NICE KCP DANAL TOSSPAYMENTS MOBILIANS KICC SMARTRO DAOU BLUEWALNUT PAYPAL ALIPAY
    EXIMBAY PAYMENTWALL SETTLE GALAXIA NAVERPAY KAKAOPAY SMILEPAY KAKAO TOSSPAY CHAI PAYCO PAYPLE
    SYRUP KSNET WELCOME JTNET KPN HYPHEN PAYLETTER TRIPLE_A INNOPAY
    """
)

# The sandbox's one PG behind every channel (its own choice): KG이니시스, V2 module.
PG_PROVIDER: Final = "INICIS_V2"
PG_COMPANY: Final = "INICIS"
PG_MERCHANT_ID: Final = "sandbox_mid"

# -- errors -------------------------------------------------------------------------------------

# Each error schema's x-portone-status-code, by its `type` discriminator. The last two are not
# in the OpenAPI file: PortOne's API overview documents IDEMPOTENCY_OUTSTANDING_REQUEST with
# 409; IDEMPOTENCY_KEY_REUSED, with the IETF draft's 422, is the sandbox's own (idempotency.py).
ERROR_STATUSES: Final[Mapping[str, int]] = {
    "INVALID_REQUEST": 400,
    "UNAUTHORIZED": 401,
    "FORBIDDEN": 403,
    "CHANNEL_NOT_FOUND": 404,
    "PAYMENT_NOT_FOUND": 404,
    "CASH_RECEIPT_NOT_FOUND": 404,
    "CASH_RECEIPT_NOT_ISSUED": 404,
    "CASH_RECEIPT_ALREADY_ISSUED": 409,
    "PG_PROVIDER": 502,
    "IDEMPOTENCY_OUTSTANDING_REQUEST": 409,
    "IDEMPOTENCY_KEY_REUSED": 422,
}


class Failure(Exception):
    """A V2 error answer, raised from deep in a check and caught once."""

    def __init__(self, error_type: str, message: str, **extra: str) -> None:
        super().__init__(message)
        self.type = error_type
        self.message = message
        self.extra = extra

    def reply(self) -> Reply:
        return failure(self.type, self.message, **self.extra)


def failure(error_type: str, message: str, **extra: str) -> Reply:
    """`{"type", "message"}` (PgProviderError adds pgCode, pgMessage) with the type's status."""
    return Reply(ERROR_STATUSES[error_type], {"type": error_type, "message": message, **extra})


def fault_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    """An injected error in V2's shape, typed by its HTTP status (the sandbox's own types)."""
    try:
        error_type = HTTPStatus(status).name
    except ValueError:
        error_type = "UNKNOWN"
    return Reply(status, {"type": error_type, "message": message}, headers or {})


# -- time ---------------------------------------------------------------------------------------

# RFC 3339 date-time (the OpenAPI `format: date-time`): a full date, a full time, an offset.
_DATE_TIME: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})"
)


def parse_date_time(text: str) -> float:
    """UNIX seconds of an RFC 3339 date-time; ValueError if it is not one (no offset, a space
    for the T, a date alone, a 13th month...)."""
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    micros = int((match.group(7) or "").ljust(6, "0")[:6])
    offset = match.group(8)
    zone = UTC
    if offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    return datetime(year, month, day, hour, minute, second, micros, tzinfo=zone).timestamp()


def date_time(seconds: float) -> str:
    """An RFC 3339 UTC timestamp as a JVM's Instant prints one: `Z`, and a fraction only when
    there is one, in 3 or 6 digits."""
    moment = datetime.fromtimestamp(seconds, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros:
        text += f".{micros // 1000:03d}" if micros % 1000 == 0 else f".{micros:06d}"
    return text + "Z"


def masked_headers(headers: Mapping[str, str]) -> dict[str, Any]:
    """Request headers for the log, with the credential in Authorization hidden."""
    shown: dict[str, Any] = {}
    for name, value in headers.items():
        shown[name] = value
        if name.lower() == "authorization":
            scheme, _, rest = value.partition(" ")
            shown[name] = f"{scheme} ***" if rest else "***"
    return shown
