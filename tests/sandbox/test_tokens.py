"""The token policy against a fake clock, as a table of getToken calls."""

from __future__ import annotations

import pytest
from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.tokens import AdjustableClock, TokenPolicy, TokenStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("lifetime", "second_call_after", "same", "expected_remaining"),
    [
        (1800, 0, True, 1800),  # reuse: same token, same expiry
        (1800, 1739, True, 61),  # 61 s left: outside the last minute, unchanged
        (1800, 1740, True, 60 + 300),  # 60 s left: extended by 5 minutes
        (1800, 1799, True, 1 + 300),
        (1800, 1800, False, 1800),  # at expiry: a new token
        (30, 0, True, 30 + 300),  # a 30 s token is born inside its last minute
    ],
)
def test_second_get_token(
    lifetime: int, second_call_after: int, same: bool, expected_remaining: int
) -> None:
    """Same token before expiry, +300 s in the last 60 s, a new token from expiry on."""
    clock = FakeClock()
    store = TokenStore(clock, TokenPolicy(lifetime=lifetime))
    first, _ = store.issue()
    first_token = first.access_token
    clock.now += second_call_after
    second, now = store.issue()
    assert (second.access_token == first_token) is same
    assert second.expired_at - now == expected_remaining


def test_validity_ends_at_expired_at() -> None:
    """A token is valid up to, not including, its expired_at second."""
    clock = FakeClock()
    store = TokenStore(clock, TokenPolicy(lifetime=10))
    token, _ = store.issue()
    clock.now = token.expired_at - 0.001
    assert store.is_valid(token.access_token)
    clock.now = token.expired_at
    assert not store.is_valid(token.access_token)
    assert not store.is_valid(None)
    assert not store.is_valid("not-a-token")


def test_revoke_all_mints_a_new_token_next() -> None:
    """After revoke_all the old token is refused and getToken returns a different one."""
    store = TokenStore(FakeClock())
    old, _ = store.issue()
    old_token = old.access_token
    store.revoke_all()
    assert not store.is_valid(old_token)
    new, _ = store.issue()
    assert new.access_token != old_token
    assert store.is_valid(new.access_token)


@pytest.mark.parametrize("kwargs", [{"lifetime": 0}, {"extend_window": -1}, {"extension": -5}])
def test_policy_rejects_nonsense(kwargs: dict[str, int]) -> None:
    """A lifetime under one second or a negative window is refused."""
    with pytest.raises(InvalidInput):
        TokenPolicy(**kwargs)


def test_clock_only_moves_forward() -> None:
    """The admin clock advances; going back would un-expire tokens and is refused."""
    clock = AdjustableClock()
    before = clock()
    clock.advance(100)
    assert clock() >= before + 100
    with pytest.raises(InvalidInput):
        clock.advance(-1)
