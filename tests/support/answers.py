"""What each answer from i'mport (or from whatever stands in front of it) must mean.

The issue's table, written out once, independently of :mod:`worker.adapters.iamport.answers`:
the unit test (tests/unit/adapters/iamport/test_answers.py) checks the pure classification
against it, and the client test checks every (status x body kind) over HTTP against the sandbox.
"""

from __future__ import annotations

from worker.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    IssuanceFailed,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
    UnsupportedPg,
)

#: Every status a gateway, a rate limiter or i'mport says "not now" with.
NOT_NOW = (408, 425, 429, 500, 501, 502, 503, 504)
#: ... and statuses whose meaning the envelope alone gives.
STATUSES = (400, 401, 404, *NOT_NOW)

_IN_ENVELOPE: dict[int, type[ProviderError]] = {
    400: InvalidRequest,
    401: AuthenticationFailed,
    404: InvalidRequest,
    408: ProviderUnavailable,
    425: ProviderUnavailable,
    429: RateLimited,
    500: IssuanceFailed,
    501: UnsupportedPg,
    502: ProviderUnavailable,
    503: ProviderUnavailable,
    504: ProviderUnavailable,
}


def expected_class(status: int, *, envelope: bool, method: str) -> type[ProviderError]:
    """i'mport's envelope keeps its meanings; without it, "not now" statuses are transient,
    and a POST or DELETE that met one is ambiguous (i'mport may have acted)."""
    if envelope:
        if status == 500 and method not in {"POST", "DELETE"}:
            return ProviderUnavailable  # a lookup that failed issued nothing
        return _IN_ENVELOPE[status]
    if status not in NOT_NOW:
        return UnexpectedResponse
    if method in {"POST", "DELETE"}:
        return OutcomeUnknown
    return RateLimited if status == 429 else ProviderUnavailable
