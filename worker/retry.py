"""When to retry, and how long to wait: pure functions, tested as tables.

Two questions are kept apart on purpose. :func:`error_for_status` turns what
i'mport answered into one class of :mod:`worker.errors`; :func:`decide` turns
that class plus the attempt number into "retry in N seconds" or "give up, and
call it this". Neither touches the network, the clock or Celery, so the whole
policy can be read and tested in one place.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from worker.errors import (
    AuthenticationFailed,
    IamportError,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    PermanentError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
    UnexpectedResponse,
    UnsupportedPg,
)


def error_for_status(
    status: int,
    *,
    code: int | None,
    message: str | None,
    headers: Mapping[str, str] | None = None,
) -> IamportError:
    """Map a non-success answer to the error class that decides its fate.

    A 2xx with ``code != 0`` is treated like a 400: the receipts endpoints use
    real statuses, but other V1 endpoints report business errors that way.
    """
    text = message or f"i'mport answered HTTP {status}"
    if status == 429:
        retry_after = parse_retry_after((headers or {}).get("Retry-After"))
        return RateLimited(
            text, retry_after=retry_after, status=status, code=code, provider_message=message
        )
    error_class: type[IamportError]
    if status == 401:
        error_class = AuthenticationFailed
    elif status == 500:
        error_class = IssuanceFailed
    elif status == 501:
        error_class = UnsupportedPg
    elif status >= 500:
        error_class = ProviderUnavailable
    elif status < 300 or 400 <= status < 500:
        error_class = InvalidRequest
    else:
        error_class = UnexpectedResponse
    return error_class(text, status=status, code=code, provider_message=message)


def parse_retry_after(value: str | None) -> float | None:
    """Read Retry-After in its delay-seconds form; an HTTP date or junk reads as absent."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


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


# The failure reasons of the result-event contract, for errors we give up on.
REASON_BY_CLASS: tuple[tuple[type[IamportError], str], ...] = (
    (AuthenticationFailed, "auth"),
    (UnsupportedPg, "unsupported_pg"),
    (NotEligible, "not_eligible"),
    (InvalidRequest, "rejected"),
    (IssuanceFailed, "rejected"),
    (UnexpectedResponse, "unexpected_response"),
)


def reason_for(error: IamportError) -> str:
    """The failure reason an event reports for an error we will not retry."""
    for error_class, reason in REASON_BY_CLASS:
        if isinstance(error, error_class):
            return reason
    return "retries_exhausted" if isinstance(error, TransientError) else "rejected"


def decide(
    error: IamportError,
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
    - A 429's Retry-After is a floor under the jittered delay. Every delay is
      capped at ``backoff_max``: the broker's visibility timeout is derived from
      that cap, and a longer countdown would be redelivered while still waiting.
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
    if isinstance(error, RateLimited) and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return Decision(retry=True, delay=min(delay, policy.backoff_max))


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
