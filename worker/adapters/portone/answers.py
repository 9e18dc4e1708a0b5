"""What an answer from PortOne V2 (or whatever stood in front of it) means: one error class.

PortOne V2 answers an error with JSON ``{"type": "...", "message": "..."}``, and its
type overrides its status (research §2.2)::

    INVALID_REQUEST              400  InvalidRequest
    UNAUTHORIZED                 401  AuthenticationFailed
    FORBIDDEN                    403  AuthenticationFailed (the secret may not reach the store)
    CHANNEL_NOT_FOUND            404  InvalidRequest
    PAYMENT_NOT_FOUND            404  NotEligible (a payment job's payment does not exist)
    CASH_RECEIPT_ALREADY_ISSUED  409  InvalidRequest: "already issued", which the issue
                                      rule settles by a lookup (worker.core.issuing)
    CASH_RECEIPT_NOT_FOUND       404  InvalidRequest (a lookup reads it as "none")
    CASH_RECEIPT_NOT_ISSUED      404  InvalidRequest (a cancel looks again)
    PG_PROVIDER                  502  IssuanceFailed: the PG refused; pgCode and pgMessage
                                      kept, masked. Its own small budget, like V1's 500
    IDEMPOTENCY_OUTSTANDING_REQUEST  409  OutcomeUnknown: the first request with this key
                                      is still being processed (UNCONFIRMED: in PortOne's
                                      docs, in no OpenAPI file)
    any other IDEMPOTENCY_*      any  ProviderUnavailable: PortOne refused the key without
                                      acting; the request is settled, so the retry looks
                                      first and sends a new key (a new generation)
    any other type               by its status, as below

An answer without PortOne's JSON came from something in between, or from PortOne
failing before it could say: a 5xx, 408, 425, 429 or 409 to a request that changes a
receipt leaves its outcome unknown (looked up after PORTONE_SETTLE_SECONDS); to a read
it is "not now".
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)
from worker.core.masking import mask_text
from worker.core.retry import parse_retry_after

#: The error types PortOne V2 documents for the cash-receipt calls, by class.
_BY_TYPE: Mapping[str, type[ProviderError]] = {
    "INVALID_REQUEST": InvalidRequest,
    "UNAUTHORIZED": AuthenticationFailed,
    "FORBIDDEN": AuthenticationFailed,
    "CHANNEL_NOT_FOUND": InvalidRequest,
    "PAYMENT_NOT_FOUND": NotEligible,
    "CASH_RECEIPT_ALREADY_ISSUED": InvalidRequest,
    "CASH_RECEIPT_NOT_FOUND": InvalidRequest,
    "CASH_RECEIPT_NOT_ISSUED": InvalidRequest,
    "PG_PROVIDER": IssuanceFailed,
}
#: The one idempotency error PortOne documents (UNCONFIRMED, research §2.5).
OUTSTANDING = "IDEMPOTENCY_OUTSTANDING_REQUEST"
#: Statuses that say "not now" whoever sends them.
_NOT_NOW = frozenset({408, 425, 429})


def error_type(body: object) -> str | None:
    """PortOne's error type when ``body`` is its error JSON, else None."""
    if isinstance(body, dict) and isinstance(body.get("type"), str):
        return str(body["type"])
    return None


def error_for_answer(
    method: str,
    status: int,
    *,
    body: object,
    headers: Mapping[str, str] | None,
    now: float,
    request: str,
    changes: bool,
) -> ProviderError:
    """The error an answer other than a clean success means: by its type, else its status."""
    retry_after = parse_retry_after((headers or {}).get("Retry-After"), now=now)
    kind = error_type(body)
    if kind is not None:
        assert isinstance(body, dict)
        return _typed(kind, status, body, request=request, retry_after=retry_after, changes=changes)
    what = f"{request}: HTTP {status} without PortOne's error JSON"
    ambiguous = status >= 500 or status in _NOT_NOW or status == 409 or 200 <= status < 300
    if ambiguous and changes:
        return OutcomeUnknown(
            f"{what}; the outcome must be looked up", status=status, retry_after=retry_after
        )
    if status == 429:
        return RateLimited(what, status=status, retry_after=retry_after)
    if ambiguous:
        return ProviderUnavailable(what, status=status, retry_after=retry_after)
    if status == 401:
        return AuthenticationFailed(what, status=status)
    return UnexpectedResponse(what, status=status)


def _typed(
    kind: str,
    status: int,
    body: Mapping[str, object],
    *,
    request: str,
    retry_after: float | None,
    changes: bool,
) -> ProviderError:
    message = _masked(body.get("message"))
    text = f"{request}: {kind}" + (f": {message}" if message else "")
    if kind == "PG_PROVIDER":
        pg = f"pgCode {_masked(body.get('pgCode'))}: {_masked(body.get('pgMessage'))}"
        text, message = f"{text} ({pg})", f"{message or ''} ({pg})".strip()
    if kind == OUTSTANDING:
        return OutcomeUnknown(
            f"{text}; the outcome must be looked up", status=status, retry_after=retry_after
        )
    if kind.startswith("IDEMPOTENCY"):
        return ProviderUnavailable(
            f"{text}; looking up, then a new key", status=status, retry_after=retry_after
        )
    found = _BY_TYPE.get(kind)
    if found is IssuanceFailed:
        # The PG refused a change; a read it failed is only "not now".
        transient = IssuanceFailed if changes else ProviderUnavailable
        return transient(text, status=status, provider_message=message, retry_after=retry_after)
    if found is not None:
        return found(text, status=status, provider_message=message)
    # A type this release does not know: its status decides, as PortOne's docs allow.
    return _by_status(text, status, message, retry_after=retry_after, changes=changes)


def _by_status(
    text: str, status: int, message: str | None, *, retry_after: float | None, changes: bool
) -> ProviderError:
    """A typed answer of a type this release does not know, by its status."""
    if status == 429:
        return RateLimited(text, status=status, retry_after=retry_after)
    if (status >= 500 or status in _NOT_NOW or status == 409) and changes:
        return OutcomeUnknown(
            f"{text}; the outcome must be looked up", status=status, retry_after=retry_after
        )
    if status >= 500 or status in _NOT_NOW:
        return ProviderUnavailable(text, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(text, status=status, provider_message=message)
    return InvalidRequest(text, status=status, provider_message=message)


def _masked(value: object) -> str | None:
    return None if value is None else mask_text(str(value))
