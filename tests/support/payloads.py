"""Payloads the tests send, in one place: an external receipt's (issue 15)."""

from __future__ import annotations

from typing import Any

PHONE = "01055554321"


def external_payload(merchant_uid: str = "order-7", **fields: Any) -> dict[str, Any]:
    """A valid ``kind: external`` payload for ``merchant_uid``, with ``fields`` changed."""
    return {
        "kind": "external",
        "merchant_uid": merchant_uid,
        "channel_key": "channel-key-test",
        "order_name": "Counter sale",
        "amount": 33000,
        "identifier": PHONE,
        **fields,
    }
