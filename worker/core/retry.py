"""When to retry, and how long to wait: pure functions, tested as tables.

Two questions are kept apart on purpose. The provider's adapter turns what it
was answered into one class of :mod:`worker.core.errors` (for i'mport:
:mod:`worker.adapters.iamport.answers`); :func:`decide` turns that class plus
the attempt number into "retry in N seconds" or "give up, and call it this".
Nothing here touches the network, the clock or Celery, or knows a provider's
statuses, so the policy can be read and tested in one place.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from worker.core.errors import (
    AmountMismatch,
    AuthenticationFailed,
    IdConflict,
    IdTaken,
    InvalidRequest,
    IssuanceFailed,
    NotConfigured,
    NotEligible,
    NotPaid,
    PermanentError,
    ProviderError,
    TransientError,
    UnexpectedResponse,
    UnsupportedPg,
)

#: The longest Retry-After honoured, in seconds: a date a year ahead is a
#: misconfigured server, not a plan. decide() honours it whole, even above
#: RETRY_BACKOFF_MAX: retrying sooner than i'mport said only meets another 429.
RETRY_AFTER_CAP = 3600.0


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Retry-After in seconds: delay-seconds or an HTTP date (RFC 9110 10.2.3), capped.

    A date is read against ``now`` (epoch seconds, the caller's clock: the core reads none); one
    in the past means "now" (0). Junk or a negative delay reads as absent.
    Whatever it says, at most :data:`RETRY_AFTER_CAP`.
    """
    if value is None:
        return None
    text = value.strip()
    seconds: float | None
    try:
        seconds = float(text)
    except ValueError:
        seconds = _seconds_until(text, now=now)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, RETRY_AFTER_CAP)


def _seconds_until(http_date: str, *, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 850 and asctime forms carry no zone: GMT by definition
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - now)


def compute_backoff(
    attempt: int,
    *,
    base: float,
    cap: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**(attempt-1))].

    Full jitter (AWS, "Exponential Backoff And Jitter") spreads a burst of
    failures from many workers instead of letting them retry in lockstep.
    ``rand`` is injected so tests can pin the randomness.
    """
    exponent = min(max(attempt - 1, 0), 62)  # keep 2**n finite for absurd attempt numbers
    ceiling = min(cap, base * 2.0**exponent)
    return ceiling * rand()


def lookup_wait(retry_after: float | None, *, attempt: int, cap: float) -> float:
    """How long an operator command waits before it looks up again after a "not now".

    Retry-After when the provider set one, else 0.4 s doubling per attempt; never
    more than ``cap``. No jitter: one operator's command is not a thundering herd,
    and its budget (``cashreceipt reconcile``) stays predictable.
    """
    return min(retry_after or 0.2 * 2.0 ** min(attempt, 62), cap)


@dataclass(frozen=True)
class RetryPolicy:
    """The retry budget, read once from configuration."""

    max_attempts: int
    issuance_failed_max_attempts: int
    backoff_base: float
    backoff_max: float


@dataclass(frozen=True)
class Decision:
    """Either ``retry`` after ``delay`` seconds, or give up with a failure ``reason``."""

    retry: bool
    delay: float = 0.0
    reason: str | None = None


#: The failure reason of a job whose merchant-chosen id already carries another sale's
#: receipt (an external receipt's merchant_uid, reused).
ID_CONFLICT = "id_conflict"
#: The failure reason of a job whose merchant-chosen id is spent: its receipt was
#: cancelled, and the provider issues no other under it.
ID_TAKEN = "id_taken"
#: The failure reason of a PortOne V2 payment not paid yet: replayable once it is.
NOT_PAID = "not_paid"
#: The failure reason of a job whose provider this worker does not serve (PROVIDERS).
NOT_CONFIGURED = "not_configured"
# The failure reasons of the result-event contract, for errors we give up on.
REASON_BY_CLASS: tuple[tuple[type[ProviderError], str], ...] = (
    (AuthenticationFailed, "auth"),
    (UnsupportedPg, "unsupported_pg"),
    (NotPaid, NOT_PAID),
    (NotEligible, "not_eligible"),
    (AmountMismatch, "amount_mismatch"),
    (NotConfigured, NOT_CONFIGURED),
    (IdConflict, ID_CONFLICT),
    (IdTaken, ID_TAKEN),
    (InvalidRequest, "rejected"),
    (IssuanceFailed, "rejected"),
    (UnexpectedResponse, "unexpected_response"),
)


def reason_for(error: ProviderError) -> str:
    """The failure reason an event reports for an error we will not retry."""
    for error_class, reason in REASON_BY_CLASS:
        if isinstance(error, error_class):
            return reason
    return "retries_exhausted" if isinstance(error, TransientError) else "rejected"


def decide(
    error: ProviderError,
    *,
    attempt: int,
    policy: RetryPolicy,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Retry or give up after ``attempt`` (1-based) ended in ``error``.

    - Permanent errors give up at once.
    - A 500 is retried only within its own small budget, because it is far
      more often a rejection (which repeats) than an outage; when that budget is
      spent the failure carries the provider's message as ``rejected``.
    - Everything else transient is retried until ``max_attempts``.
    - The jittered backoff is capped at ``backoff_max``; a Retry-After (a
      429's, or any transient answer's, already capped at
      :data:`RETRY_AFTER_CAP` when parsed) is then a floor under it, so the
      retry never comes before the provider said. A delay no countdown may
      hold (the broker's visibility timeout is derived from the longest one)
      parks the job in the ledger instead (``JobRunner.hand_back`` in worker/core/runner.py).
    """
    if isinstance(error, PermanentError) or not isinstance(error, TransientError):
        return Decision(retry=False, reason=reason_for(error))
    budget = policy.max_attempts
    if isinstance(error, IssuanceFailed):
        budget = min(budget, policy.issuance_failed_max_attempts)
    if attempt >= budget:
        reason = "rejected" if isinstance(error, IssuanceFailed) else "retries_exhausted"
        return Decision(retry=False, reason=reason)
    delay = compute_backoff(attempt, base=policy.backoff_base, cap=policy.backoff_max, rand=rand)
    if isinstance(error, TransientError) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return Decision(retry=True, delay=delay)


def settle_before_failing(
    decision: Decision,
    *,
    unsettled: bool,
    attempt: int,
    policy: RetryPolicy,
    sent_here: bool = False,
    rand: Callable[[], float] = random.random,
) -> Decision:
    """Turn a give-up into a hand-back while the job's last POST or DELETE is unsettled.

    i'mport may still act on an ambiguous request up to IAMPORT_SETTLE_SECONDS after it
    was sent, so a failure published before a lookup made after that bound may be a
    receipt the buyer holds. Such a give-up becomes a retry (the hand-back waits out the
    bound), carrying the reason it will fail with if the settling lookup finds nothing.
    The attempts after RETRY_MAX_ATTEMPTS only look (:func:`settling_attempt`), and get
    a budget of their own as long as the first, with the same backoff: a lookup that
    keeps failing past it gives up, still unsettled. A request this attempt itself sent
    (``sent_here``: a DELETE or a re-issue's POST after a settling lookup, a POST after a
    retry that did not count against i'mport) is always handed back, past that budget too:
    the attempt after it only looks, so this ends.
    """
    if decision.retry or not unsettled:
        return decision
    if attempt >= policy.max_attempts * 2 and not sent_here:
        return decision
    settling = max(attempt - policy.max_attempts, 0) + 1
    delay = compute_backoff(settling, base=policy.backoff_base, cap=policy.backoff_max, rand=rand)
    return Decision(retry=True, delay=delay, reason=decision.reason)


def settling_attempt(*, unsettled: bool, attempt: int, policy: RetryPolicy) -> bool:
    """Whether ``attempt`` only looks: the budget is spent and the last request is unsettled."""
    return unsettled and attempt > policy.max_attempts


def retry_countdown(
    delay: float | None,
    *,
    attempt: int,
    policy: RetryPolicy,
    countdown_max: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """The countdown a task's retry is published with, whatever its cause.

    ``delay`` is the runner's own, when it has one (``Retry.delay`` in
    worker/core/runner.py: :func:`decide`'s backoff with a Retry-After as its
    floor, the wait for an unsettled request, 0 to hand the job on or back at
    once). None is a wait the provider did not shape: another task still
    holds the job after DUPLICATE_WAIT (:func:`poll_again`), or the job store
    failed. That waits the policy's backoff for ``attempt`` (the message's,
    1-based). Either is clamped at ``countdown_max`` (RETRY_COUNTDOWN_MAX):
    the broker's visibility timeout covers no longer countdown.
    """
    if delay is None:
        delay = compute_backoff(
            attempt, base=policy.backoff_base, cap=policy.backoff_max, rand=rand
        )
    return min(delay, countdown_max)


#: How often a duplicate looks at the job again while another task holds it.
DUPLICATE_POLL_SECONDS = 0.1


def poll_again(waited: float, *, bound: float) -> float | None:
    """While another task holds the job: the pause before looking again, in seconds.

    None once the duplicate has ``waited`` (seconds since it first looked) as
    long as ``bound`` (DUPLICATE_WAIT): it retries then, on
    :func:`retry_countdown` with no delay of its own.
    """
    return None if waited >= bound else DUPLICATE_POLL_SECONDS


def broker_countdown(delay: float | None, *, whole_seconds: bool) -> float | None:
    """The countdown to publish for ``delay`` seconds.

    On a RabbitMQ quorum queue a countdown is native delayed delivery, which
    counts whole seconds and refuses a delay that truncates to 0 (kombu's
    ``calculate_routing_key`` raises, so a 0.3 s retry would never be
    published). There a delay is rounded up to whole seconds; a few hundred
    milliseconds more before a retry cost nothing.
    """
    if not whole_seconds or delay is None or delay <= 0:
        return delay
    return float(math.ceil(delay))
