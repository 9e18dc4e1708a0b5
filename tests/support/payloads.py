"""Payloads the tests send, in one place: an external receipt's (issue 15), and a PortOne V2
receipt's (issue 16)."""

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


def portone_payload(
    payment_id: str, channel_key: str, kind: str = "external", **fields: Any
) -> dict[str, Any]:
    """A valid ``provider: portone`` payload of ``kind`` for ``payment_id``, through the
    channel ``channel_key`` (the sandbox's ``portone_channel_key``), with ``fields`` changed."""
    return {
        "provider": "portone",
        "kind": kind,
        "payment_id": payment_id,
        "channel_key": channel_key,
        "order_name": "Counter sale",
        "amount": 33000,
        "identifier": PHONE,
        **fields,
    }
