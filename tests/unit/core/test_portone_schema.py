"""The PortOne V2 payload (issue 16): its fields, its currency and its paid_at."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from worker.core.schemas import InvalidPayload, PortOneReceiptSchema, load_payload

SCHEMA = PortOneReceiptSchema()


def payload(**fields: Any) -> dict[str, Any]:
    return {
        "provider": "portone",
        "payment_id": "pay-1",
        "channel_key": "channel-key-1",
        "order_name": "Counter sale",
        "amount": 33000,
        "identifier": "01055554321",
        **fields,
    }


def test_a_v2_payload_loads_with_its_defaults() -> None:
    data = SCHEMA.load(payload())
    assert (data["kind"], data["currency"], data["paid_at"]) == ("payment", "KRW", None)


@pytest.mark.parametrize("missing", ["payment_id", "channel_key", "order_name", "amount"])
def test_the_order_is_required(missing: str) -> None:
    given = payload()
    del given[missing]
    with pytest.raises(ValidationError) as caught:
        SCHEMA.load(given)
    assert missing in caught.value.messages


def test_only_won_is_a_currency() -> None:
    with pytest.raises(ValidationError) as caught:
        SCHEMA.load(payload(currency="USD"))
    assert caught.value.messages == {"currency": ["Must be 'KRW': cash receipts are in won."]}


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("2026-12-06T18:30:00+09:00", "2026-12-06T09:30:00Z"),
        ("2026-12-06T09:30:00Z", "2026-12-06T09:30:00Z"),
        (1796549400, "2026-12-06T09:30:00Z"),
    ],
)
def test_paid_at_is_kept_in_one_form(given: object, kept: str) -> None:
    """Normalised once, so the body is the same on every retry under one key."""
    assert SCHEMA.load(payload(paid_at=given))["paid_at"] == kept


@pytest.mark.parametrize("given", ["2026-12-06T09:30:00", "yesterday", True, 10**20, 1.5])
def test_paid_at_that_names_no_moment_is_refused(given: object) -> None:
    with pytest.raises(ValidationError) as caught:
        SCHEMA.load(payload(paid_at=given))
    assert "paid_at" in caught.value.messages


def test_this_release_does_not_serve_portone_yet() -> None:
    """Until the V2 client is wired, a V2 payload fails by name, never reaches i'mport."""
    with pytest.raises(InvalidPayload) as caught:
        load_payload(payload())
    assert "provider" in caught.value.errors
