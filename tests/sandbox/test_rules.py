"""The sandbox's pure rules, as tables: VAT, the tax service's identifier rule, masking."""

from __future__ import annotations

import pytest
from iamport_sandbox import rules


@pytest.mark.parametrize(
    ("amount", "tax_free", "vat"),
    [
        (11000, 0, 1000),
        (10000, 0, 909),
        (10005, 0, 909),  # 909.54...: floored, not rounded
        (10010, 0, 910),
        (11000, 1000, 909),
        (11000, 11000, 0),
        (10, 0, 0),
        (0, 0, 0),
    ],
)
def test_vat_is_a_floored_eleventh_of_the_taxable_part(
    amount: int, tax_free: int, vat: int
) -> None:
    """VAT = floor((amount - tax_free) / 11)."""
    assert rules.vat_for(amount, tax_free) == vat


@pytest.mark.parametrize(
    ("identifier", "identifier_type", "rejected"),
    [
        ("01012345678", None, False),
        ("010-1234-5678", None, False),
        ("010 1234 5678", None, False),
        ("0111234567", None, False),
        ("1168200276", None, False),  # business registration number
        ("9710139019902", None, False),  # resident registration number
        ("123456789012345678", None, False),  # cash-receipt card
        ("12345678901", None, True),  # 11 digits not starting with 0: the demo's rejected number
        ("123456789", None, True),
        ("12345678901234567890", None, True),
        ("0101234567x", None, True),
        ("", None, True),
        ("01012345678", "phone", False),
        ("02123456789", "phone", True),
        ("01012345678", "business", True),
        ("1168200276", "business", False),
        ("9710139019902", "person", False),
        ("01012345678", "person", True),
        ("123456789012345678", "taxcard", False),
        ("01012345678", "taxcard", True),
    ],
)
def test_tax_service_rule(identifier: str, identifier_type: str | None, rejected: bool) -> None:
    """Digits only, 10-19 long, 11 digits must start with 0, and the length fits a stated type."""
    result = rules.identifier_rejection(identifier, identifier_type)
    assert (result is not None) == rejected
    if rejected:
        assert result is not None
        assert "[TS1]" in result


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("01012345678", "010****5678"),
        ("1168200276", "116***0276"),
        ("010-1234-5678", "010******5678"),
        ("123456789", "*********"),
        ("", ""),
    ],
)
def test_mask_keeps_three_and_four(value: str, masked: str) -> None:
    """First 3 and last 4 characters survive; values under 10 characters are starred whole."""
    assert rules.mask(value) == masked


def test_mask_fields_hides_identifiers_and_secrets_only() -> None:
    """identifier and buyer_tel are masked, imp_secret hidden, everything else kept."""
    body = {
        "identifier": "01012345678",
        "buyer_tel": "01098765432",
        "imp_secret": "sandbox_secret",
        "buyer_name": "홍길동",
        "tax_free": 0,
    }
    assert rules.mask_fields(body) == {
        "identifier": "010****5678",
        "buyer_tel": "010****5432",
        "imp_secret": "***",
        "buyer_name": "홍길동",
        "tax_free": 0,
    }


@pytest.mark.parametrize(
    ("pg", "params", "missing"),
    [
        ("html5_inicis", {}, []),
        ("kicc", {}, ["identifier_type"]),
        ("kicc", {"identifier_type": "phone"}, []),
        ("settle", {"identifier_type": " "}, ["identifier_type"]),
        ("nice_v2", {"identifier_type": "phone"}, ["type"]),
        ("daou", {"company_tel": "0212345678"}, ["company_name", "corp_reg_no"]),
        ("ksnet", {"buyer_name": "홍길동"}, ["product_type"]),
        ("welcome", {"type": "person", "buyer_tel": "01012345678"}, ["corp_reg_no"]),
    ],
)
def test_pg_required_fields(pg: str, params: dict[str, str], missing: list[str]) -> None:
    """Each PG's own required fields, blank counting as missing."""
    assert rules.missing_pg_fields(pg, params) == missing


def test_support_lists_match_the_spec_gaps() -> None:
    """kicc and settle issue but cannot be looked up; kicc cannot be cancelled either."""
    assert {"kicc", "settle"} <= rules.ISSUE_PGS
    assert not {"kicc", "settle"} & rules.LOOKUP_PGS
    assert "kicc" not in rules.CANCEL_PGS
    assert "settle" in rules.CANCEL_PGS
    assert "payco" not in rules.ISSUE_PGS
