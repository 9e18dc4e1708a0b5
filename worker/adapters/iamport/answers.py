"""What an answer from i'mport (or whatever stood in front of it) means: one error class.

i'mport's envelope, its statuses and its codes are known here and in the client,
nowhere above the adapters: the core sees only :mod:`worker.core.errors`, and its
retry policy (:mod:`worker.core.retry`) decides from the class alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    IssuanceFailed,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
    UnexpectedResponse,
    UnsupportedPg,
)
from worker.core.retry import parse_retry_after

#: Statuses that say "not now" whoever sends them: a gateway, a rate limiter or
#: i'mport. Without i'mport's envelope every 5xx counts too (a load balancer's
#: page says nothing about whether i'mport acted).
TRANSIENT_STATUSES = frozenset({408, 425, 429})
#: The methods whose lost answer may hide a change at i'mport.
CHANGING_METHODS = frozenset({"POST", "DELETE"})


def is_envelope(body: object) -> bool:
    """Whether a JSON body is i'mport's ``{"code": .., "message": .., "response": ..}``."""
    return (
        isinstance(body, dict)
        and isinstance(body.get("code"), int)
        and not isinstance(body.get("code"), bool)
        and "message" in body
        and "response" in body
    )


def error_for_answer(
    method: str,
    status: int,
    *,
    body: object,
    headers: Mapping[str, str] | None = None,
    now: float,
    request: str | None = None,
    changes: bool | None = None,
) -> ProviderError:
    """The error an answer other than a clean success means, by status *and* by body.

    i'mport's envelope means i'mport itself answered, so its status says what
    happened (:func:`error_for_status`). Anything else (an empty body, an HTML
    page, some other JSON) came from something in between, or from i'mport
    failing before it could say: then only "not now" statuses (408, 425, 429,
    any 5xx) are transient, and for a POST or DELETE they leave the outcome
    unknown: a gateway may time out while i'mport goes on. ``now`` (epoch
    seconds) reads a Retry-After given as an HTTP date; ``request`` names the
    request in the error's text (the method when None). ``changes`` says whether
    the request may change something at i'mport (by default: a POST or DELETE);
    a token request is a POST that changes no receipt, so its lost answer is
    only "not now", and so is its 500: only a request that may change a
    receipt can fail to issue.
    """
    if changes is None:
        changes = method in CHANGING_METHODS
    retry_after = parse_retry_after((headers or {}).get("Retry-After"), now=now)
    if is_envelope(body):
        assert isinstance(body, dict)
        message = body.get("message")
        return error_for_status(
            status,
            code=body["code"],
            message=None if message is None else str(message),
            retry_after=retry_after,
            changes=changes,
        )
    what = f"{request or method}: HTTP {status} without i'mport's envelope"
    transient = status in TRANSIENT_STATUSES or status >= 500
    if (transient or 200 <= status < 300) and changes:
        # A 2xx that is not i'mport's envelope is something in between answering too.
        return OutcomeUnknown(
            f"{what}; the outcome must be looked up", status=status, retry_after=retry_after
        )
    if status == 429:
        return RateLimited(what, status=status, retry_after=retry_after)
    if transient or 200 <= status < 300:
        return ProviderUnavailable(what, status=status, retry_after=retry_after)
    return UnexpectedResponse(what, status=status)


def error_for_status(
    status: int,
    *,
    code: int | None,
    message: str | None,
    retry_after: float | None = None,
    changes: bool = True,
) -> ProviderError:
    """Map a non-success answer in i'mport's envelope to the error class that decides its fate.

    A 2xx with ``code != 0`` is treated like a 400: the receipts endpoints use
    real statuses, but other V1 endpoints report business errors that way. A
    408 or 425 is "try again" whoever says it. A 500 is "issuance failed" only
    for a request that ``changes`` a receipt: read so for a lookup, it ended a
    job ``rejected`` while the receipt its lost POST created was live.
    """
    text = message or f"i'mport answered HTTP {status}"
    transient: type[TransientError] | None = None
    if status == 429:
        transient = RateLimited
    elif status == 500:
        transient = IssuanceFailed if changes else ProviderUnavailable
    elif status in TRANSIENT_STATUSES or (status > 501):
        transient = ProviderUnavailable
    if transient is not None:
        return transient(
            text, retry_after=retry_after, status=status, code=code, provider_message=message
        )
    permanent: type[ProviderError]
    if status == 401:
        permanent = AuthenticationFailed
    elif status == 501:
        permanent = UnsupportedPg
    elif status < 300 or 400 <= status < 500:
        permanent = InvalidRequest
    else:
        permanent = UnexpectedResponse
    return permanent(text, status=status, code=code, provider_message=message)
