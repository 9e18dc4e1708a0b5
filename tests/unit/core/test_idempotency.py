"""The V2 idempotency key: derived, stable, distinct per part, within PortOne's limits."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.idempotency import header_value, idempotency_key

BASE = {
    "provider": "portone",
    "store": "store-1",
    "id": "pay-1",
    "operation": "issue",
    "generation": 0,
}


def key(**changed: object) -> str:
    return idempotency_key(**{**BASE, **changed})  # type: ignore[arg-type]


def test_the_same_request_gets_the_same_key() -> None:
    """Any worker, after any crash, sends the same key for the same request."""
    assert key() == key()
    # Pinned: a change of derivation would make retries after an upgrade new requests.
    assert key() == "-3cBOgkV-1wsUc-MLwQ1zet4uMpH2OSJtZZRvd00n-I"


@pytest.mark.parametrize(
    "changed",
    [
        {"provider": "iamport"},
        {"store": "store-2"},
        {"id": "pay-2"},
        {"operation": "cancel"},
        {"operation": "reissue"},
        {"generation": 1},
    ],
)
def test_each_part_changes_the_key(changed: dict[str, object]) -> None:
    assert key(**changed) != key()


def test_parts_cannot_run_into_each_other() -> None:
    """("a", "bc") and ("ab", "c") are two requests: the parts are kept apart."""
    assert key(store="s", id="tore-1") != key(store="st", id="ore-1")
    with pytest.raises(ValueError, match="NUL"):
        key(id="pay\0issue")


@pytest.mark.parametrize(
    ("changed", "problem"),
    [({"operation": "refund"}, "operation"), ({"generation": -1}, "generation")],
)
def test_refuses_what_no_request_is(changed: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        key(**changed)


@given(st.text(min_size=1, max_size=300).filter(lambda text: "\0" not in text))
def test_every_key_is_what_portone_accepts(payment_id: str) -> None:
    """16–256 ASCII characters of the recommended set, whatever the id (Korean, long)."""
    made = key(id=payment_id)
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,256}", made)


def test_the_header_value_is_quoted() -> None:
    assert header_value(key()) == f'"{key()}"'
