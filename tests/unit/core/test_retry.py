"""The retry policy, as tables: after which error, and which attempt, what happens next."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from worker.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    UnsupportedPg,
)
from worker.core.retry import (
    Decision,
    RetryPolicy,
    broker_countdown,
    compute_backoff,
    decide,
    lookup_wait,
    parse_retry_after,
    poll_again,
    retry_countdown,
    settle_before_failing,
    settling_attempt,
)

ROOT = Path(__file__).resolve().parents[3]
POLICY = RetryPolicy(
    max_attempts=5, issuance_failed_max_attempts=3, backoff_base=1.0, backoff_max=30.0
)
NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("0", 0.0),
        ("-1", None),
        ("soon", None),
        ("", None),
        ("nan", None),
        (None, None),
        ("86400", 3600.0),  # capped
        # an HTTP date, against NOW: IMF-fixdate, the obsolete RFC 850 and asctime forms
        ("Tue, 14 Nov 2023 22:13:50 GMT", 30.0),
        ("Tuesday, 14-Nov-23 22:13:50 GMT", 30.0),
        ("Tue Nov 14 22:13:50 2023", 30.0),
        ("Tue, 14 Nov 2023 22:00:00 GMT", 0.0),  # in the past: now
        ("Wed, 14 Nov 2024 22:13:20 GMT", 3600.0),  # a year ahead: capped
        ("Tue, 32 Nov 2023 22:13:50 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delay-seconds or an HTTP date; a past date is now, junk is absent, all capped."""
    assert parse_retry_after(value, now=NOW) == expected


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
        # 429: the backoff is capped, then Retry-After is a floor under it, honoured whole
        (RateLimited("x", retry_after=5), 1, Decision(retry=True, delay=5.0)),
        (RateLimited("x", retry_after=0.5), 3, Decision(retry=True, delay=4.0)),
        (RateLimited("x", retry_after=5), 4, Decision(retry=True, delay=8.0)),
        (RateLimited("x", retry_after=45), 4, Decision(retry=True, delay=45.0)),  # over the cap
        (RateLimited("x", retry_after=600), 1, Decision(retry=True, delay=600.0)),
        (RateLimited("x", retry_after=3600), 1, Decision(retry=True, delay=3600.0)),
        # ... and any transient answer's Retry-After, a gateway's 503 as much as a 429
        (OutcomeUnknown("x", retry_after=9), 1, Decision(retry=True, delay=9.0)),
        (ProviderUnavailable("x", retry_after=9), 1, Decision(retry=True, delay=9.0)),
    ],
)
def test_decide(error: ProviderError, attempt: int, expected: Decision) -> None:
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


@pytest.mark.parametrize(
    ("delay", "attempt", "countdown_max", "rand", "expected"),
    [
        # the runner's own delay (decide()'s, a Retry-After's, a settling wait's) stands ...
        pytest.param(5.0, 1, 120.0, 1.0, 5.0, id="provider-retry"),
        pytest.param(45.0, 4, 120.0, 1.0, 45.0, id="retry-after-over-backoff-max"),
        pytest.param(0.0, 7, 120.0, 1.0, 0.0, id="handed-on-or-back-at-once"),
        # ... up to RETRY_COUNTDOWN_MAX
        pytest.param(120.0, 1, 120.0, 1.0, 120.0, id="provider-retry-at-the-clamp"),
        pytest.param(200.0, 1, 120.0, 1.0, 120.0, id="provider-retry-clamped"),
        # none of its own (a duplicate that waited out DUPLICATE_WAIT, a store error):
        # the policy's backoff for the message's attempt, jittered ...
        pytest.param(None, 1, 120.0, 1.0, 1.0, id="busy-first-attempt"),
        pytest.param(None, 3, 120.0, 1.0, 4.0, id="store-error-third-attempt"),
        pytest.param(None, 3, 120.0, 0.5, 2.0, id="busy-jittered"),
        pytest.param(None, 9, 120.0, 1.0, 30.0, id="busy-at-backoff-max"),
        # ... and clamped too, where RETRY_COUNTDOWN_MAX is below RETRY_BACKOFF_MAX
        pytest.param(None, 9, 10.0, 1.0, 10.0, id="busy-clamped"),
        pytest.param(None, 3, 0.3, 1.0, 0.3, id="store-error-clamped"),
    ],
)
def test_retry_countdown(
    delay: float | None, attempt: int, countdown_max: float, rand: float, expected: float
) -> None:
    """Every retry's countdown, whatever its cause, from one rule."""
    countdown = retry_countdown(
        delay, attempt=attempt, policy=POLICY, countdown_max=countdown_max, rand=lambda: rand
    )
    assert countdown == expected


@pytest.mark.parametrize(
    ("waited", "bound", "expected"),
    [
        (0.0, 20.0, 0.1),  # another task holds the job: look again shortly
        (19.95, 20.0, 0.1),
        (20.0, 20.0, None),  # waited out DUPLICATE_WAIT: retry
        (31.0, 20.0, None),
        (0.0, 0.0, None),  # DUPLICATE_WAIT=0: retry at once
    ],
)
def test_poll_again(waited: float, bound: float, expected: float | None) -> None:
    """A duplicate polls the job until it has waited DUPLICATE_WAIT, then retries."""
    assert poll_again(waited, bound=bound) == expected


GIVE_UP = Decision(retry=False, reason="retries_exhausted")


@pytest.mark.parametrize(
    ("decision", "unsettled", "attempt", "expected"),
    [
        # nothing unsettled: the decision stands
        (GIVE_UP, False, 5, GIVE_UP),
        (Decision(retry=True, delay=3.0), True, 2, Decision(retry=True, delay=3.0)),
        # the last attempt's POST unsettled: handed back for a settling lookup, not failed
        (GIVE_UP, True, 5, Decision(retry=True, delay=1.0, reason="retries_exhausted")),
        # a permanent answer to the at-once lookup, within the budget: handed back too
        (
            Decision(retry=False, reason="unexpected_response"),
            True,
            2,
            Decision(retry=True, delay=1.0, reason="unexpected_response"),
        ),
        # settling lookups that keep failing: their own budget, with the same backoff ...
        (GIVE_UP, True, 7, Decision(retry=True, delay=4.0, reason="retries_exhausted")),
        (GIVE_UP, True, 9, Decision(retry=True, delay=16.0, reason="retries_exhausted")),
        # ... then the job gives up, still unsettled
        (GIVE_UP, True, 10, GIVE_UP),
        (GIVE_UP, True, 14, GIVE_UP),
    ],
)
def test_settle_before_failing(
    decision: Decision, unsettled: bool, attempt: int, expected: Decision
) -> None:
    """No failure is reported while the job's last POST or DELETE is unsettled, within a bound."""
    result = settle_before_failing(
        decision, unsettled=unsettled, attempt=attempt, policy=POLICY, rand=lambda: 1.0
    )
    assert result == expected


@pytest.mark.parametrize(
    ("sent_here", "attempt", "expected"),
    [
        # sent by this attempt, past the settling budget too: handed back, the next only looks
        (True, 10, Decision(retry=True, delay=30.0, reason="retries_exhausted")),
        (True, 14, Decision(retry=True, delay=30.0, reason="retries_exhausted")),
        # within the settling budget it makes no difference
        (True, 7, Decision(retry=True, delay=4.0, reason="retries_exhausted")),
        # adopted from the ledger (an earlier attempt's): the settling budget holds
        (False, 10, GIVE_UP),
    ],
)
def test_a_request_sent_by_this_attempt_is_never_given_up(
    sent_here: bool, attempt: int, expected: Decision
) -> None:
    """A POST or DELETE the attempt itself sent (a re-issue after the settling lookup of a
    DELETE) gets a settling attempt whatever the count; that attempt only looks."""
    result = settle_before_failing(
        GIVE_UP,
        unsettled=True,
        attempt=attempt,
        policy=POLICY,
        sent_here=sent_here,
        rand=lambda: 1.0,
    )
    assert result == expected


@pytest.mark.parametrize(
    ("unsettled", "attempt", "expected"),
    [
        (True, 5, False),  # within the budget: look first, then POST if nothing is there
        (True, 6, True),  # past it: only look
        (False, 6, False),  # nothing to settle
    ],
)
def test_settling_attempt(unsettled: bool, attempt: int, expected: bool) -> None:
    """Only an attempt past the budget with its last request unsettled is a settling one."""
    assert settling_attempt(unsettled=unsettled, attempt=attempt, policy=POLICY) is expected


@pytest.mark.parametrize("attempt", [6, 9])
def test_a_settling_lookup_that_finds_nothing_gives_up(attempt: int) -> None:
    """After the budget, OutcomeUnknown (raised once the lookup settled the POST as not acted
    on, its send time cleared) ends the job as retries_exhausted."""
    decision = decide(OutcomeUnknown("x"), attempt=attempt, policy=POLICY, rand=lambda: 1.0)
    assert (
        settle_before_failing(
            decision, unsettled=False, attempt=attempt, policy=POLICY, rand=lambda: 1.0
        )
        == GIVE_UP
    )


@pytest.mark.parametrize(
    ("delay", "whole", "expected"),
    [
        (None, True, None),
        (0.0, True, 0.0),
        (0.05, True, 1.0),
        (1.0, True, 1.0),
        (1.2, True, 2.0),
        (0.05, False, 0.05),
        (29.5, False, 29.5),
    ],
)
def test_broker_countdown(delay: float | None, whole: bool, expected: float | None) -> None:
    """On a quorum queue a countdown is whole seconds, never one that truncates to 0."""
    assert broker_countdown(delay, whole_seconds=whole) == expected


@pytest.mark.parametrize(
    ("retry_after", "attempt", "expected"),
    [
        pytest.param(None, 1, 0.4, id="first retry"),
        pytest.param(None, 2, 0.8, id="doubles"),
        pytest.param(None, 5, 2.0, id="capped"),
        pytest.param(1.5, 1, 1.5, id="retry-after wins"),
        pytest.param(30.0, 1, 2.0, id="retry-after capped"),
        pytest.param(None, 10**6, 2.0, id="absurd attempt stays finite"),
    ],
)
def test_lookup_wait(retry_after: float | None, attempt: int, expected: float) -> None:
    assert lookup_wait(retry_after, attempt=attempt, cap=2.0) == pytest.approx(expected)
