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


@dataclass(frozen=True)
class ReceiptOrder:
    """The receipt a provider is asked to issue for one payment.

    The provider port takes it as it is; each provider's adapter builds its own
    request from it (i'mport V1: worker/adapters/iamport/shapes.py). A
    validated payload (:class:`~worker.core.schemas.ReceiptRequest`) is one.
    """

    imp_uid: str
    identifier: str
    merchant_uid: str | None = None
    #: The receipt's other fields that were given (its type, the buyer's), as validated.
    options: Mapping[str, Any] = field(default_factory=dict)

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

    imp_uid: str
    receipt_tid: str | None
    apply_num: str | None
    type: str | None
    amount: int | None
    vat: int | None
    receipt_url: str | None
    applied_at: int | None
    cancelled_at: int | None

    @property
    def active(self) -> bool:
        """Issued and not cancelled."""
        return not self.cancelled_at

    def as_dict(self) -> dict[str, Any]:
        """Every field, for the events and the ledger record."""
        return asdict(self)


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
