"""What a provider says about a payment and its cash receipt, in provider-neutral types.

The i'mport V1 client (the adapter) reads its answers for a receipt and a payment
into these (worker/adapters/iamport/shapes.py); the rules of the core (:mod:`worker.core.issuing`,
:mod:`worker.core.refunds`) and the events read only these. A second provider
(PortOne V2) fills the same fields from its own answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.core.contract import EXTERNAL, IAMPORT, PAYMENT, PORTONE


@dataclass(frozen=True, eq=False)
class JobKey:
    """Which receipt job: one per provider, kind and the provider's own id.

    Its :attr:`receipt_key` is the job's one name everywhere: in events, in the
    store's indexes and side keys, and in the operator's commands. No kind's
    prefix is a prefix of another's, so two jobs of two kinds never share a
    key, whatever their ids. Two keys are equal when they name one job: the same
    receipt key. PortOne V2 names a payment's receipt and an external one by the
    same ``paymentId`` (the merchant chooses it for cash taken outside): to PortOne
    they are one receipt, so both kinds are one job, ``portone:<payment_id>``.
    """

    provider: str
    kind: str
    #: The provider's id: an ``imp_uid`` for a V1 payment, a ``merchant_uid`` for a V1
    #: external receipt, a ``paymentId`` for PortOne V2.
    id: str

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobKey) and other.receipt_key == self.receipt_key

    def __hash__(self) -> int:
        return hash(self.receipt_key)

    @classmethod
    def payment(cls, imp_uid: str) -> JobKey:
        """The job of a V1 (i'mport) payment."""
        return cls(IAMPORT, PAYMENT, imp_uid)

    @classmethod
    def external(cls, merchant_uid: str) -> JobKey:
        """The job of a V1 external receipt: cash taken outside i'mport."""
        return cls(IAMPORT, EXTERNAL, merchant_uid)

    @classmethod
    def portone(cls, payment_id: str, kind: str = PAYMENT) -> JobKey:
        """The job of a PortOne V2 receipt, of either kind: one per ``paymentId``."""
        return cls(PORTONE, kind, payment_id)

    @classmethod
    def of(cls, job: JobKey | str) -> JobKey:
        """``job``; a string is a V1 payment's imp_uid, as operators, the CLI and the tests
        name a payment to the adapters."""
        return job if isinstance(job, JobKey) else cls.payment(job)

    @property
    def prefix(self) -> str:
        """``iamport``, ``iamport-external``, ``portone``: the receipt key's part before
        the id."""
        if self.kind == PAYMENT or self.provider == PORTONE:
            return self.provider
        return f"{self.provider}-{self.kind}"

    @property
    def receipt_key(self) -> str:
        """``iamport:<imp_uid>``, ``iamport-external:<merchant_uid>`` or
        ``portone:<payment_id>``."""
        return f"{self.prefix}:{self.id}"

    @property
    def imp_uid(self) -> str | None:
        """The i'mport payment's id; None for a job of another kind."""
        return self.id if (self.provider, self.kind) == (IAMPORT, PAYMENT) else None

    @classmethod
    def parse(cls, receipt_key: str) -> JobKey | None:
        """The job a receipt key names; None when no known prefix starts it."""
        prefix, colon, rest = receipt_key.partition(":")
        if not colon:
            return None
        return _BY_PREFIX[prefix](rest) if prefix in _BY_PREFIX else None


_BY_PREFIX = {
    JobKey.payment("").prefix: JobKey.payment,
    JobKey.external("").prefix: JobKey.external,
    # Both kinds of a V2 job are one job; its key does not say which (its payload does).
    JobKey.portone("").prefix: JobKey.portone,
}


@dataclass(frozen=True)
class ReceiptOrder:
    """The receipt a provider is asked to issue for one payment.

    The provider port takes it as it is; each provider's adapter builds its own
    request from it (i'mport V1: worker/adapters/iamport/shapes.py). A
    validated payload (:class:`~worker.core.schemas.ReceiptRequest`) is one.
    """

    job: JobKey
    identifier: str
    merchant_uid: str | None = None
    #: The receipt's other fields that were given (its type, the buyer's), as validated.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: The sale's total when this receipt is for the balance a partial refund left
    #: (``amount`` is then the balance): what a PortOne V2 payment's total is checked with.
    sale: int | None = None

    @property
    def imp_uid(self) -> str | None:
        """The V1 payment's id; None for a receipt of another kind."""
        return self.job.imp_uid

    def receipt_fields(self) -> dict[str, Any]:
        """The receipt's fields that were given: the identifier, then the options."""
        return {"identifier": self.identifier, **self.options}


@dataclass(frozen=True)
class Receipt:
    """One cash receipt of a payment: issued, and maybe cancelled since.

    The issued and cancelled events carry these fields as they are (the README
    lists them): their names are part of the event contract. They are named as
    i'mport V1 names a receipt's; another provider fills them from its own.
    """

    #: The V1 payment's id; None for an external receipt, which names its ``merchant_uid``.
    imp_uid: str | None
    receipt_tid: str | None
    apply_num: str | None
    type: str | None
    amount: int | None
    vat: int | None
    receipt_url: str | None
    applied_at: int | None
    cancelled_at: int | None
    #: An external receipt's order id, which names it at the provider; None for a
    #: payment's receipt, whose events carry ``merchant_uid`` beside it.
    merchant_uid: str | None = None

    @property
    def active(self) -> bool:
        """Issued and not cancelled."""
        return not self.cancelled_at

    def as_dict(self) -> dict[str, Any]:
        """Every field, for the events and the ledger record; ``merchant_uid`` only for an
        external receipt, so a payment's receipt reads as it always has."""
        fields = asdict(self)
        if fields["merchant_uid"] is None:
            del fields["merchant_uid"]
        return fields


@dataclass(frozen=True)
class Payment:
    """The fields of a payment that decide receipt questions.

    ``cancel_amount`` is the cumulative refunded amount; ``cash_receipt_issued``
    says a receipt exists even when the provider cannot show it (a PG without a
    receipt lookup, or a receipt the PG issued itself). ``paid`` and ``cash``
    are the facts the issue rule reads; ``status``, ``pay_method`` and
    ``pg_provider`` are the provider's own words, for messages only.
    """

    imp_uid: str
    merchant_uid: str | None
    pay_method: str | None
    pg_provider: str | None
    status: str
    amount: int
    cancel_amount: int
    currency: str
    cash_receipt_issued: bool
    #: Paid, and not wholly cancelled: a receipt may be issued for it.
    paid: bool
    #: Paid by a means a cash receipt is for: a virtual account or a bank transfer.
    cash: bool
    #: The tax-free part of ``amount``, and how much of it was refunded: PortOne V2 says
    #: both (a V2 payment's refund is re-issued for ``taxFree - cancelledTaxFree``);
    #: i'mport computes a balance itself, so its reader leaves them unset.
    tax_free: int | None = None
    cancel_tax_free: int = 0

    @property
    def balance(self) -> int:
        """What is left of the payment after every refund so far."""
        return self.amount - self.cancel_amount
