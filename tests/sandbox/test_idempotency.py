"""PortOne V2's Idempotency-Key without a server: the header's format, and what a key finds."""

from __future__ import annotations

import pytest
from iamport_sandbox.idempotency import (
    NEW,
    OUTSTANDING,
    REPLAYED,
    REUSED,
    IdempotencyStore,
    KeyFormatError,
    fingerprint,
    parse_header,
)
from iamport_sandbox.state import Reply
from iamport_sandbox.tokens import AdjustableClock

KEY = "0123456789abcdef"  # 16 characters, the shortest PortOne allows


@pytest.mark.parametrize(
    ("header", "key"),
    [
        (f'"{KEY}"', KEY),
        (f' "{KEY}" ', KEY),
        ('"' + "x" * 256 + '"', "x" * 256),
        ('"abc\\"def\\\\ghijklmnop"', 'abc"def\\ghijklmnop'),
        ('"key with spaces, ok"', "key with spaces, ok"),
    ],
)
def test_a_quoted_key_of_16_to_256_characters(header: str, key: str) -> None:
    """An RFC 8941 string, unquoted and unescaped; its length counts the key, not the quotes."""
    assert parse_header([header]) == key


def test_no_header_is_no_key() -> None:
    assert parse_header([]) is None


@pytest.mark.parametrize(
    "headers",
    [
        [KEY],
        [f"'{KEY}'"],
        [f'"{KEY}'],
        ['"' + "x" * 15 + '"'],
        ['"' + "x" * 257 + '"'],
        ['""'],
        [""],
        ['"0123456789abcdé"'],
        ['"0123456789abcdef\\n"'],
        ['"0123456789"abcdef"'],
        [f'"{KEY}"', f'"{KEY}"'],
    ],
    ids=[
        "unquoted",
        "single quotes",
        "unclosed",
        "15 chars",
        "257 chars",
        "empty string",
        "empty header",
        "not ASCII",
        "bad escape",
        "inner quote",
        "sent twice",
    ],
)
def test_malformed_keys_are_refused(headers: list[str]) -> None:
    with pytest.raises(KeyFormatError, match=r"\w"):
        parse_header(headers)


def test_fingerprint_tells_every_part_apart() -> None:
    """Method, path, query and body each count, and parts cannot slide into each other."""
    base = fingerprint("POST", "/portone/cash-receipts", "", b"{}")
    assert base == fingerprint("POST", "/portone/cash-receipts", "", b"{}")
    others = {
        fingerprint("PUT", "/portone/cash-receipts", "", b"{}"),
        fingerprint("POST", "/portone/cash-receipt", "", b"{}"),
        fingerprint("POST", "/portone/cash-receipts", "storeId=x", b"{}"),
        fingerprint("POST", "/portone/cash-receipts", "", b"{ }"),
        fingerprint("POST", "/portone/cash-receipts{}", "", b""),
    }
    assert base not in others
    assert len(others) == 5


def ok_reply() -> Reply:
    return Reply(200, {"cashReceipt": {"issueNumber": "1"}})


def test_a_key_is_outstanding_then_replays_its_answer() -> None:
    store = IdempotencyStore(AdjustableClock())
    first = store.claim(KEY, "a")
    assert first.state == NEW
    assert store.claim(KEY, "a").state == OUTSTANDING
    store.complete(first.record, ok_reply())
    again = store.claim(KEY, "a")
    assert again.state == REPLAYED
    assert again.record.reply == ok_reply()


def test_a_key_reused_for_another_request_is_refused_outstanding_or_not() -> None:
    store = IdempotencyStore(AdjustableClock())
    first = store.claim(KEY, "a")
    assert store.claim(KEY, "b").state == REUSED
    store.complete(first.record, ok_reply())
    assert store.claim(KEY, "b").state == REUSED
    assert store.claim(KEY, "a").state == REPLAYED


def test_keys_expire_on_the_sandbox_clock_but_never_while_outstanding() -> None:
    clock = AdjustableClock()
    store = IdempotencyStore(clock, retention_seconds=10800)
    held = store.claim(KEY, "a")
    clock.advance(20000)
    assert store.claim(KEY, "a").state == OUTSTANDING
    store.complete(held.record, ok_reply())
    # 3 hours run from the first request, which is long past: the answer is forgotten.
    assert store.claim(KEY, "b").state == NEW

    other = "fedcba9876543210"
    store.complete(store.claim(other, "a").record, ok_reply())
    clock.advance(10799)
    assert store.claim(other, "a").state == REPLAYED
    clock.advance(1)
    assert store.claim(other, "a").state == NEW


def test_retention_changes_apply_to_keys_already_stored() -> None:
    clock = AdjustableClock()
    store = IdempotencyStore(clock)
    store.complete(store.claim(KEY, "a").record, ok_reply())
    clock.advance(60)
    store.retention_seconds = 30
    assert store.claim(KEY, "a").state == NEW
    assert store.view()["keys"][KEY]["state"] == "outstanding"


def test_release_forgets_an_outstanding_key_only() -> None:
    store = IdempotencyStore(AdjustableClock())
    held = store.claim(KEY, "a")
    store.release(held.record)
    fresh = store.claim(KEY, "a")
    assert fresh.state == NEW
    store.complete(fresh.record, ok_reply())
    store.release(fresh.record)
    assert store.claim(KEY, "a").state == REPLAYED


def test_view_lists_live_keys() -> None:
    clock = AdjustableClock()
    store = IdempotencyStore(clock, retention_seconds=100)
    store.complete(store.claim(KEY, "a").record, Reply(409, {"type": "X"}))
    store.claim("outstanding-key-0001", "b")
    view = store.view()
    assert view["retention_seconds"] == 100
    assert view["keys"][KEY]["state"] == "completed"
    assert view["keys"][KEY]["status"] == 409
    assert view["keys"][KEY]["expires_at"] == view["keys"][KEY]["created_at"] + 100
    assert view["keys"]["outstanding-key-0001"] == {
        "state": "outstanding",
        "status": None,
        "created_at": view["keys"]["outstanding-key-0001"]["created_at"],
        "expires_at": None,
    }
    clock.advance(100)
    assert list(store.view()["keys"]) == ["outstanding-key-0001"]
