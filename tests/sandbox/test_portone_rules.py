"""PortOne V2's vocabulary without a server: timestamps, error bodies, masking, list defaults."""

from __future__ import annotations

import pytest
from iamport_sandbox import portone_rules as v2
from iamport_sandbox import rules
from iamport_sandbox.portone_input import DEFAULT_RANGE_SECONDS, parse_issue, parse_list
from iamport_sandbox.portone_rules import Failure

from tests.sandbox.client import issue_body


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2026-01-02T03:04:05Z", 1767323045.0),
        ("2026-01-02T12:04:05+09:00", 1767323045.0),
        ("2026-01-01T22:04:05-05:00", 1767323045.0),
        ("2026-01-02T03:04:05.5Z", 1767323045.5),
        ("2026-01-02T03:04:05.123456789Z", 1767323045.123456),
    ],
)
def test_rfc3339_date_times_are_read(text: str, seconds: float) -> None:
    assert v2.parse_date_time(text) == pytest.approx(seconds, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [
        "2026-01-02",
        "2026-01-02 03:04:05Z",
        "2026-01-02T03:04:05",
        "2026-01-02T03:04Z",
        "2026-13-02T03:04:05Z",
        "2026-01-02T03:04:05+24:00",
        "2026-01-02T03:04:05+0900",
        "1767323045",
    ],
)
def test_what_is_not_rfc3339_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        v2.parse_date_time(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (1767323045.0, "2026-01-02T03:04:05Z"),
        (1767323045.5, "2026-01-02T03:04:05.500Z"),
        (1767323045.000123, "2026-01-02T03:04:05.000123Z"),
    ],
)
def test_timestamps_print_as_a_jvm_instant(seconds: float, text: str) -> None:
    """UTC with Z; a fraction only when there is one, in 3 or 6 digits."""
    assert v2.date_time(seconds) == text
    assert v2.parse_date_time(text) == pytest.approx(seconds, abs=1e-6)


def test_each_error_type_has_its_status() -> None:
    assert v2.failure("CASH_RECEIPT_NOT_ISSUED", "x").status == 404
    assert v2.failure("CASH_RECEIPT_ALREADY_ISSUED", "x").status == 409
    reply = v2.failure("PG_PROVIDER", "m", pgCode="C", pgMessage="p")
    assert (reply.status, reply.body) == (
        502,
        {"type": "PG_PROVIDER", "message": "m", "pgCode": "C", "pgMessage": "p"},
    )
    assert v2.fault_error(503, "x").body == {"type": "SERVICE_UNAVAILABLE", "message": "x"}


def test_masking_reaches_into_v2_bodies() -> None:
    """customer.identityNumber and phoneNumber masked, apiSecret hidden, the rest kept."""
    body = {
        "paymentId": "p",
        "customer": {"identityNumber": "01012345678", "phoneNumber": "01098765432", "name": "홍"},
        "apiSecret": "s",
    }
    assert rules.mask_fields(body) == {
        "paymentId": "p",
        "customer": {"identityNumber": "010****5678", "phoneNumber": "010****5432", "name": "홍"},
        "apiSecret": "***",
    }
    assert v2.masked_headers({"Authorization": "PortOne secret", "X": "y"}) == {
        "Authorization": "PortOne ***",
        "X": "y",
    }
    assert v2.masked_headers({"authorization": "secret"}) == {"authorization": "***"}


def test_list_defaults_are_the_schemas() -> None:
    """page 0 of 10, newest issue first, the 90 days before now."""
    query = parse_list(None)
    assert (query.page_number, query.page_size, query.sort_by, query.sort_order) == (
        0,
        10,
        "ISSUED_AT",
        "DESC",
    )
    assert query.window(1_000_000_000.0) == (1_000_000_000.0 - DEFAULT_RANGE_SECONDS, 1e9)
    failed = parse_list({"filter": {"statuses": ["FAILED", "ISSUED"]}})
    assert failed.statuses == frozenset({"ISSUE_FAILED", "ISSUED"})


VALID = issue_body("p", amount={"total": 1000})


def test_vat_is_left_to_the_receipt_when_not_sent() -> None:
    body = parse_issue(VALID)
    assert (body.total, body.tax_free, body.vat) == (1000, 0, None)
    with pytest.raises(Failure, match=r"amount\.total"):
        parse_issue({**VALID, "amount": {"total": -5}})
