"""What an ingress dead letter shows of an entry it could not read: nothing in clear."""

from __future__ import annotations

import json

import pytest

from worker.adapters.store.ingress_entries import _shown_data, shown_type

PERSONAL = {
    "buyer_name": "홍길동",
    "buyer_email": "hong@example.com",
    "identifer": "a9001011234567",
}


def test_a_json_array_shows_each_object_masked_and_nothing_else() -> None:
    data = [PERSONAL, "hong@example.com", 9001011234567]
    shown = json.dumps(_shown_data(json.dumps(data).encode(), data), ensure_ascii=False)
    for value in ("홍길동", "hong@example.com", "9001011234567"):
        assert value not in shown


def test_text_that_is_not_json_is_not_shown() -> None:
    raw = b"name=\xed\x99\x8d\xea\xb8\xb8\xeb\x8f\x99 email=hong@example.com"
    shown = _shown_data(raw, None)
    assert shown == f"<redacted> ({len(raw)} bytes)"


@pytest.mark.parametrize(
    ("kind", "shown"),
    [
        ("payment.confirmed", "payment.confirmed"),
        ("payment.refunded", "payment.refunded"),
        ("홍길동", "<redacted>"),
        ("hong@example.com", "<redacted>"),
        ("Payment Refunded", "<redacted>"),
        ("tel.01012345678", "<redacted>"),
        ("tel.010.1234.5678", "<redacted>"),
        ("kim-minsu.010-1234-5678", "<redacted>"),
        ("hong.gildong", "<redacted>"),
        ("payment.010-1234-5678", "<redacted>"),
    ],
)
def test_an_entry_type_is_shown_only_when_shaped_like_one(kind: str, shown: str) -> None:
    assert shown_type(kind) == shown
