"""The PortOne V2 payload (issue 16): its fields, its currency and its paid_at."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from worker.adapters.privacy.sealing import Sealer
from worker.core.schemas import (
    InvalidPayload,
    PortOneReceiptSchema,
    load_cancellation,
    load_payload,
    partial_refund,
    payload_job,
    readable_job,
)
from worker.core.types import JobKey

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


def test_a_v2_payload_names_its_job_and_goes_round_its_message() -> None:
    """``portone:<payment_id>``, one job for both kinds; the message the worker keeps and
    re-publishes loads as the same request, the store never from it."""
    sealer = Sealer([], allow_plaintext=True)
    request = load_payload(payload(kind="external", paid_at=1796549400, storeId="other"))
    assert request.job == JobKey.portone("pay-1") == JobKey.portone("pay-1", "external")
    assert request.job.receipt_key == "portone:pay-1"
    message = request.to_message(sealer)
    assert {key: message[key] for key in ("provider", "kind", "payment_id")} == {
        "provider": "portone",
        "kind": "external",
        "payment_id": "pay-1",
    }
    assert "merchant_uid" not in message and "storeId" not in message
    assert load_payload(message) == request
    assert readable_job(message) == request.job


def test_a_v2_refund_names_its_payment_id_and_a_payments_partial_one_its_amount() -> None:
    """A V2 cancellation names its payment_id; a V2 payment's partial refund names the
    refunded amount, as V1's does (PortOne's payment says the balance, never the
    payload); an external one says its balance, as V1's does."""
    message = load_cancellation({"provider": "portone", "payment_id": "pay-1"})
    assert payload_job(message) == JobKey.portone("pay-1")
    partial = {"provider": "portone", "payment_id": "pay-1", "amount": 1000}
    assert partial_refund(load_cancellation(partial))
    with pytest.raises(InvalidPayload) as caught:
        load_cancellation({**partial, "remaining_amount": 4000})
    assert "PortOne's payment says" in caught.value.errors["remaining_amount"][0]
    with pytest.raises(InvalidPayload) as caught:
        load_cancellation({"provider": "portone", "kind": "external", "amount": 1000})
    assert "payment_id" in caught.value.errors


@pytest.mark.parametrize("paid_at", [-5, 0, 32503680000, "1999-12-31T23:59:59Z"])
def test_a_paid_at_that_is_no_sales_time_is_refused(paid_at: object) -> None:
    """0, a negative number, year 3000: a mistake, never sent to the tax service."""
    with pytest.raises(InvalidPayload) as caught:
        load_payload(payload(paid_at=paid_at))
    assert "paid_at" in caught.value.errors


def test_lowercase_rfc_3339_and_currency_are_read() -> None:
    request = load_payload(payload(paid_at="2026-12-01t09:00:00z", currency="krw"))
    assert (request.options["paid_at"], request.options["currency"]) == (
        "2026-12-01T09:00:00Z",
        "KRW",
    )
