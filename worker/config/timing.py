"""The time rule: how long a claim holds and a message stays invisible (README, "The time rule")."""

from __future__ import annotations

import math
from collections.abc import Mapping

from worker.config import ConfigError
from worker.core.budget import MAX_PROVIDER_CALLS_PER_ATTEMPT

#: The most HTTP requests one provider call makes: i'mport's client may fetch a
#: token, send, get a 401, renew the token and send again.
HTTP_REQUESTS_PER_CALL = 4
#: The most HTTP requests one attempt can make: the runner stops an attempt before
#: its calls pass MAX_PROVIDER_CALLS_PER_ATTEMPT (worker/core/budget.py: five, an
#: issue's receipt lookup, payment lookup, POST, and the lookup pair again after an
#: ambiguous answer; a refund that needs more goes on in the next attempt), and each
#: call makes at most HTTP_REQUESTS_PER_CALL.
MAX_HTTP_REQUESTS_PER_ATTEMPT = MAX_PROVIDER_CALLS_PER_ATTEMPT * HTTP_REQUESTS_PER_CALL
#: Slack for Redis round trips, event publishing and scheduling delays.
VISIBILITY_MARGIN_SECONDS = 10


#: The most HTTP requests one call makes, per provider: PortOne V2 sends once (its API
#: secret needs no token, so there is no renewal and no resend).
HTTP_REQUESTS_PER_CALL_OF = {"iamport": HTTP_REQUESTS_PER_CALL, "portone": 1}


def attempt_timeout(timeouts: Mapping[str, float]) -> float:
    """The read timeout, in i'mport's terms, whose longest attempt is the longest attempt
    of every provider configured (``{"iamport": IAMPORT_TIMEOUT, "portone":
    PORTONE_TIMEOUT}``): the time rule's functions below take it as ``iamport_timeout``.

    One worker serves every provider configured, so its lease and visibility timeout
    cover the slowest: PortOne V2's 60 s read timeout with one request per call weighs
    like an i'mport timeout of 15 s with four.
    """
    return max(
        timeout * HTTP_REQUESTS_PER_CALL_OF[provider] / HTTP_REQUESTS_PER_CALL
        for provider, timeout in timeouts.items()
    )


def longest_attempt_seconds(iamport_timeout: float) -> float:
    """The longest one attempt can run: every request waits out connect and read.

    The thread pool ignores Celery's time limits, so these timeouts are the
    real bound on a task.
    """
    return MAX_HTTP_REQUESTS_PER_ATTEMPT * 2 * iamport_timeout


def settle_bound(bounds: Mapping[str, float]) -> float:
    """The largest bound on late processing of every provider configured (0 with none).

    One worker serves every provider, and a lease or a redelivery cannot tell
    whose request a dead worker had in flight: they wait out the longest.
    """
    return max(bounds.values(), default=0.0)


def lease_seconds(iamport_timeout: float, settle_seconds: float) -> float:
    """How long a claim holds: one attempt's worst case, then the bound on late processing.

    A job taken over after its worker died mid-POST is looked up no earlier
    than the bound after that POST was sent, even if the send time was never
    recorded.
    """
    return longest_attempt_seconds(iamport_timeout) + settle_seconds + VISIBILITY_MARGIN_SECONDS


def minimum_visibility_timeout(
    *,
    iamport_timeout: float,
    longest_countdown: float,
    duplicate_wait: float,
    settle_seconds: float,
) -> int:
    """The smallest safe visibility timeout, in whole seconds.

    A retry is a new message that a worker fetches at once and holds, unacked,
    until its countdown ends; kombu starts the visibility clock at the fetch.
    Then the message may wait up to ``DUPLICATE_WAIT`` for another task's job
    before it claims the job, and makes one attempt: a message that is fenced
    out and claims again hands the job on to a new message instead of
    attempting twice (worker/core/runner.py). So the timeout must cover all three,
    or Redis hands the message to a second worker while the first still has it.
    A message redelivered because its worker died mid-POST must also come after
    the bound on late processing (``settle_seconds``), like a lease.
    """
    return math.ceil(
        longest_countdown + duplicate_wait + lease_seconds(iamport_timeout, settle_seconds)
    )


def unacked_restore_interval(visibility_timeout: int) -> int:
    """How often, in seconds, kombu scans for unacked messages past the visibility timeout.

    kombu scans every interval x throttle seconds (10 x 10 by default). One scan
    every interval, at most 10 s, returns the message of a dead worker (or one
    whose requeue Redis refused) within the visibility timeout and this.
    """
    return max(1, min(10, visibility_timeout // 10))


def check_backoff(base: float, most: float) -> None:
    """Stop when the first retry delay would be longer than the cap on every delay."""
    if base > most:
        raise ConfigError(
            f"RETRY_BACKOFF_BASE ({base:g}) is larger than RETRY_BACKOFF_MAX ({most:g})"
        )


def check_visibility_timeout(
    timeout: int,
    *,
    iamport_timeout: float,
    longest_countdown: float,
    duplicate_wait: float,
    settle_seconds: float,
) -> None:
    """Stop when BROKER_VISIBILITY_TIMEOUT is below :func:`minimum_visibility_timeout`.

    The message says which settings make up the minimum, so the one to change
    can be found.
    """
    minimum = minimum_visibility_timeout(
        iamport_timeout=iamport_timeout,
        longest_countdown=longest_countdown,
        duplicate_wait=duplicate_wait,
        settle_seconds=settle_seconds,
    )
    if timeout < minimum:
        raise ConfigError(
            f"BROKER_VISIBILITY_TIMEOUT={timeout} is too short: a task can wait "
            f"{longest_countdown:g}s (the smaller of RETRY_BACKOFF_MAX and RETRY_COUNTDOWN_MAX), "
            f"wait {duplicate_wait:g}s for a duplicate (DUPLICATE_WAIT) and then run "
            f"{longest_attempt_seconds(iamport_timeout):g}s ({MAX_HTTP_REQUESTS_PER_ATTEMPT} "
            f"requests x 2 x IAMPORT_TIMEOUT) and its POST may be acted on {settle_seconds:g}s "
            f"later (IAMPORT_SETTLE_SECONDS), so it must be at least {minimum}; leave it unset "
            "to derive it"
        )


def check_event_retention(retention: int, *, visibility_timeout: int) -> None:
    """Stop when RESULT_STREAM_RETENTION is shorter than BROKER_VISIBILITY_TIMEOUT.

    A task's once-only marker lives as long as its event. A copy of its message can
    still come a visibility timeout after the task ended (a redelivery, the sweeper's
    re-send): with the marker gone, that copy would run the task again and publish a
    second event for it.
    """
    if retention < visibility_timeout:
        raise ConfigError(
            f"RESULT_STREAM_RETENTION={retention} is shorter than BROKER_VISIBILITY_TIMEOUT="
            f"{visibility_timeout}: a task's once-only marker is kept as long as its event, and "
            "a copy of its message may come a visibility timeout after it ended (a redelivery, "
            "a sweeper re-send), which would run it again; it must be at least "
            f"{visibility_timeout}"
        )
