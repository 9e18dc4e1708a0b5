"""The retry policy, as tables: which answer is which error, and what happens next."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from worker.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    IamportError,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    UnsupportedPg,
)
from worker.retry import (
    Decision,
    RetryPolicy,
    compute_backoff,
    decide,
    error_for_status,
    parse_retry_after,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY = RetryPolicy(
    max_attempts=5, issuance_failed_max_attempts=3, backoff_base=1.0, backoff_max=30.0
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequest),
        (404, InvalidRequest),
        (200, InvalidRequest),  # a 2xx with code != 0 is a business error
        (401, AuthenticationFailed),
        (429, RateLimited),
        (500, IssuanceFailed),
        (501, UnsupportedPg),
        (502, ProviderUnavailable),
        (503, ProviderUnavailable),
        (504, ProviderUnavailable),
        (599, ProviderUnavailable),
        (302, UnexpectedResponse),
    ],
)
def test_status_maps_to_error_class(status: int, expected: type[IamportError]) -> None:
    """Each HTTP status lands in exactly the class that decides its fate."""
    error = error_for_status(status, code=-1, message="msg")
    assert type(error) is expected
    assert (error.status, error.code, error.provider_message) == (status, -1, "msg")


def test_rate_limit_keeps_retry_after() -> None:
    """A 429 carries i'mport's Retry-After into the error."""
    error = error_for_status(429, code=None, message=None, headers={"Retry-After": "7"})
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Only the delay-seconds form is honoured; anything else reads as absent."""
    assert parse_retry_after(value) == expected


@pytest.mark.parametrize(
    ("error", "attempt", "expected"),
    [
        # transient: retried with backoff until the attempt budget is spent
        (ConnectionFailed("x"), 1, Decision(retry=True, delay=1.0)),
        (OutcomeUnknown("x"), 2, Decision(retry=True, delay=2.0)),
        (ProviderUnavailable("x", status=503), 4, Decision(retry=True, delay=8.0)),
        (
            ProviderUnavailable("x", status=503),
            5,
            Decision(retry=False, reason="retries_exhausted"),
        ),
        (OutcomeUnknown("x"), 9, Decision(retry=False, reason="retries_exhausted")),
        # 500: a smaller budget of its own, then a rejection with the provider's words
        (IssuanceFailed("x", status=500), 2, Decision(retry=True, delay=2.0)),
        (IssuanceFailed("x", status=500), 3, Decision(retry=False, reason="rejected")),
        # permanent: never retried
        (InvalidRequest("x", status=400), 1, Decision(retry=False, reason="rejected")),
        (NotEligible("x", status=400), 1, Decision(retry=False, reason="not_eligible")),
        (UnsupportedPg("x", status=501), 1, Decision(retry=False, reason="unsupported_pg")),
        (AuthenticationFailed("x", status=401), 1, Decision(retry=False, reason="auth")),
        (UnexpectedResponse("x"), 1, Decision(retry=False, reason="unexpected_response")),
        # 429: Retry-After is a floor under the backoff, the cap a ceiling over both
        (RateLimited("x", retry_after=5), 1, Decision(retry=True, delay=5.0)),
        (RateLimited("x", retry_after=0.5), 3, Decision(retry=True, delay=4.0)),
        (RateLimited("x", retry_after=600), 1, Decision(retry=True, delay=30.0)),
    ],
)
def test_decide(error: IamportError, attempt: int, expected: Decision) -> None:
    """The whole retry policy in one table (jitter pinned to its maximum)."""
    assert decide(error, attempt=attempt, policy=POLICY, rand=lambda: 1.0) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (1, 1.0, 1.0),
        (2, 1.0, 2.0),
        (3, 1.0, 4.0),
        (6, 1.0, 30.0),  # 32 capped at 30
        (500, 1.0, 30.0),  # no overflow for absurd attempts
        (3, 0.5, 2.0),  # full jitter: a fraction of the ceiling
        (3, 0.0, 0.0),
    ],
)
def test_compute_backoff(attempt: int, rand: float, expected: float) -> None:
    """Exponential growth from the base, capped, scaled by the jitter draw."""
    assert compute_backoff(attempt, base=1.0, cap=30.0, rand=lambda: rand) == expected


def test_backoff_jitter_stays_within_bounds() -> None:
    """With real randomness every delay stays in [0, ceiling]."""
    delays = [compute_backoff(4, base=1.0, cap=30.0) for _ in range(500)]
    assert all(0.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 100


def test_default_budget_rides_out_an_hour_long_outage() -> None:
    """Full jitter makes single delays short; the default budget must still outlast an hour.

    20,000 jobs' delays are drawn (seeded) with the default policy, read from celeryconfig in
    a clean environment. With the old default of 40 attempts about 0.7% gave up within the hour.
    """
    code = (
        "import celeryconfig as c; "
        "print(c.retry_max_attempts, c.retry_backoff_base, c.retry_backoff_max)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    attempts, base, cap = result.stdout.split()
    rng = random.Random(7)
    shortest = min(
        sum(
            compute_backoff(attempt, base=float(base), cap=float(cap), rand=rng.random)
            for attempt in range(1, int(attempts))
        )
        for _ in range(20_000)
    )
    assert shortest > 80 * 60
