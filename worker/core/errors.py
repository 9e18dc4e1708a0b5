"""Errors at the provider boundary: one tree, whichever provider's adapter raises them.

Every failure a provider's client (the i'mport V1 client today) can raise is one
of these, so a caller decides what to do by class, never by parsing message text
(i'mport passes the PG's own wording through, and that wording is not stable)::

    ProviderError                 anything that went wrong talking to the provider
    ├── TransientError            retrying the same request later may succeed
    │   ├── ConnectionFailed      the request never left: nothing can have happened
    │   ├── OutcomeUnknown        a POST or DELETE that may have reached i'mport: no answer, or a
    │   │                         transient status without i'mport's envelope (a gateway's page);
    │   │                         settled by a lookup, IAMPORT_SETTLE_SECONDS after it was sent
    │   ├── ProviderUnavailable   502/503/504, a JSON 408/425, a lookup's bare 5xx
    │   ├── RateLimited           429; carries Retry-After
    │   └── IssuanceFailed        500 "issuance failed": a PG/NTS rejection *or* a PG outage,
    │                             so it gets a small retry budget of its own
    └── PermanentError            the same request will fail the same way
        ├── InvalidRequest        400 with no receipt behind it
        ├── NotEligible           the payment is not a paid virtual-account or transfer payment
        │   └── NotPaid           a PortOne V2 payment not paid yet (a virtual account awaiting
        │                         its deposit): replayable once it is
        ├── AmountMismatch        the payload's amount is not the PortOne V2 payment's
        ├── NotConfigured         the job's provider is not in this worker's PROVIDERS
        ├── IdConflict            the merchant's id already carries a receipt that is not this job's
        ├── IdTaken               the merchant's id is spent: its receipt was cancelled, and the
        │                         provider issues no other under it (a re-issue after a refund)
        ├── AuthenticationFailed  bad credentials, or a 401 that survived one token renewal
        ├── UnsupportedPg         501: the PG has no cash-receipt support at i'mport
        └── UnexpectedResponse    a 2xx that breaks the envelope or the answer's shape

Each error keeps the provider's HTTP status, its own error ``code`` (i'mport's
envelope code) and ``message`` (the body of every non-2xx is read), so a failure
event can say exactly what the provider said. None of them ever holds a request
body: the identifier in it is personal data.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base of every provider failure; carries what the provider said.

    ``status`` is the HTTP status of its answer (None: no answer); ``code`` is the
    provider's own error code (i'mport V1: its envelope's ``code``), and
    ``provider_message`` its own words, masked; None where it gave none.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        provider_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.provider_message = provider_message

    def __str__(self) -> str:
        detail = super().__str__()
        if self.status is None:
            return detail
        return f"HTTP {self.status}: {detail}"


class TransientError(ProviderError):
    """Retrying the same request later may succeed; ``retry_after`` is the server's wait, if any.

    Any transient answer may carry ``Retry-After`` (a 503 from a gateway as
    well as a 429), and it is honoured whatever the class.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: int | None = None,
        provider_message: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, provider_message=provider_message)
        self.retry_after = retry_after


class ConnectionFailed(TransientError):
    """The connection failed before the request was sent."""


class OutcomeUnknown(TransientError):
    """The request may have been processed; settle it with a lookup before re-POSTing."""


class ProviderUnavailable(TransientError):
    """i'mport or the PG is not answering properly: 502-504, a 408/425, a lookup's bare 5xx."""


class RateLimited(TransientError):
    """i'mport answered 429; ``retry_after`` is its Retry-After in seconds, if given."""


class IssuanceFailed(TransientError):
    """500 "issuance failed": a PG or tax-service rejection, or a PG outage."""


class PermanentError(ProviderError):
    """The same request will fail the same way; only a human or new data helps."""


class InvalidRequest(PermanentError):
    """400 with no receipt behind it: a missing field or a state i'mport refuses."""


class NotEligible(PermanentError):
    """The payment cannot carry a cash receipt: not paid, or not by virtual account or transfer."""


class NotPaid(NotEligible):
    """A PortOne V2 payment that is not ``PAID`` or ``PARTIAL_CANCELLED``: a virtual
    account not yet deposited. Replaying the job after the deposit issues it."""


class AmountMismatch(PermanentError):
    """The payload names an amount the PortOne V2 payment does not have: the receipt
    would tell the tax service another sum than the buyer paid."""


class NotConfigured(PermanentError):
    """The job names a provider this worker does not serve (``PROVIDERS``): nothing is
    sent. Replayable once every worker on the queue serves it."""


class IdConflict(PermanentError):
    """The merchant's own id (an external receipt's ``merchant_uid``) already carries a
    receipt for another amount: merchants reuse their ids, and that receipt is not this
    job's duplicate. Another id, or a human, resolves it."""


class IdTaken(PermanentError):
    """A 400 "already issued" for a merchant's own id whose only receipt is cancelled:
    the provider issues no new one under it. Whether V1 does so after a refund's DELETE
    is unconfirmed (research §1.6); where it does not, the balance is issued under a
    derived id (``cashreceipt replay --new-id``)."""


class AuthenticationFailed(PermanentError):
    """Bad credentials, or a 401 that survived one token renewal.

    Fixing the credentials makes the same job succeed: its failure event says
    ``retryable`` (worker.core.events.RETRYABLE_REASONS, the one place that decides it).
    """


class UnsupportedPg(PermanentError):
    """501: i'mport has no cash-receipt support for this PG."""


class UnexpectedResponse(PermanentError):
    """A 2xx that breaks the envelope or the answer's shape (a receipt, a payment)."""
