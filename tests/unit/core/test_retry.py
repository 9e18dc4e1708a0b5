"""The retry policy, as tables: which answer is which error, and what happens next."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.answers import STATUSES, expected_class
from worker.adapters.iamport.answers import error_for_answer, error_for_status
from worker.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    IamportError,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    TransientError,
    UnexpectedResponse,
    UnsupportedPg,
)
from worker.core.retry import (
    Decision,
    RetryPolicy,
    compute_backoff,
    decide,
    parse_retry_after,
    settle_before_failing,
    settling_attempt,
)

ROOT = Path(__file__).resolve().parents[3]
POLICY = RetryPolicy(
    max_attempts=5, issuance_failed_max_attempts=3, backoff_base=1.0, backoff_max=30.0
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequest),
        (404, InvalidRequest),
        (408, ProviderUnavailable),  # "try again", whoever says it: not a rejection
        (425, ProviderUnavailable),
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
    error = error_for_answer("POST", 429, body=ENVELOPE, headers={"Retry-After": "7"}, now=NOW)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
ENVELOPE = {"code": -1, "message": "msg", "response": None}
#: The bodies an answer can come with, as the client reads them: not JSON at
#: all (an empty body or an HTML page read as None), JSON that is not
#: i'mport's envelope, and the envelope.
BODIES = {
    "empty": None,
    "html": None,
    "other_json": {"error": "upstream timed out"},
    "json_list": ["not", "an", "envelope"],
    "envelope": ENVELOPE,
}


@pytest.mark.parametrize("method", ["POST", "DELETE", "GET"])
@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("status", STATUSES)
def test_answer_maps_by_status_and_body(method: str, kind: str, status: int) -> None:
    """Every (status x body kind x method): the envelope keeps i'mport's meanings, the rest
    are a gateway's, and a "not now" from a gateway leaves a POST or DELETE ambiguous."""
    error = error_for_answer(method, status, body=BODIES[kind], headers={}, now=NOW)
    assert type(error) is expected_class(status, envelope=kind == "envelope", method=method)
    assert error.status == status
    if kind == "envelope":
        assert (error.code, error.provider_message) == (-1, "msg")


def test_token_request_500_is_transient_not_issuance_failed() -> None:
    """getToken is a POST that issues nothing: its 500 in the envelope is i'mport failing to
    answer. Read as "issuance failed", three of them ended a job `rejected` with no POST made."""
    error = error_for_answer("POST", 500, body=ENVELOPE, now=NOW, changes=False)
    assert type(error) is ProviderUnavailable
    assert type(error_for_answer("POST", 500, body=ENVELOPE, now=NOW)) is IssuanceFailed


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [
        (200, "POST", OutcomeUnknown),  # a 2xx that is not i'mport's: nobody knows what happened
        (200, "GET", ProviderUnavailable),
        (505, "POST", OutcomeUnknown),  # any 5xx without the envelope
        (599, "GET", ProviderUnavailable),
        (302, "POST", UnexpectedResponse),
    ],
)
def test_other_bare_answers(status: int, method: str, expected: type[IamportError]) -> None:
    """Statuses outside the table's columns, without the envelope."""
    assert type(error_for_answer(method, status, body=None, now=NOW)) is expected


@pytest.mark.parametrize("kind", ["empty", "other_json", "envelope"])
@pytest.mark.parametrize("status", [429, 503])
def test_any_transient_answer_keeps_retry_after(kind: str, status: int) -> None:
    """Retry-After is honoured on every transient answer, with or without the envelope."""
    error = error_for_answer(
        "POST", status, body=BODIES[kind], headers={"Retry-After": "12"}, now=NOW
    )
    assert isinstance(error, TransientError)
    assert error.retry_after == 12.0  # type: ignore[attr-defined]


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
