"""What a provider says about a payment and its cash receipt, in provider-neutral types.

The i'mport V1 client (the adapter) reads its ReceiptAnnotation and PaymentAnnotation
into these; the rules of the core (:mod:`worker.core.issuing`,
:mod:`worker.core.refunds`) and the events read only these. A second provider
(PortOne V2) fills the same fields from its own answers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Receipt:
    """One cash receipt of a payment: issued, and maybe cancelled since.

    The fields are those of i'mport's ReceiptAnnotation, which the issued and
    cancelled events carry as they are (the README lists them): their names are
    part of the event contract.
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
    receipt lookup, or a receipt the PG issued itself).
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
