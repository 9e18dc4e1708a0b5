"""What a receipt belongs to: an i'mport payment, a cash sale made outside i'mport, or a PortOne
V2 paymentId.

A payment's receipts are reached by its imp_uid, an external sale's by the merchant's own
merchant_uid, a V2 receipt by its paymentId (V2 has one id for both: the merchant mints it for
cash taken outside). The three are chosen from overlapping sets of strings, so the imp_uid `x`,
the merchant_uid `x` and the paymentId `x` are unrelated. Every map of state, faults and audit
figures is keyed by both the kind and the id, which no choice of ids can make collide.
"""

from __future__ import annotations

from typing import Final, NamedTuple

PAYMENT: Final = "payment"
EXTERNAL: Final = "external"
PORTONE: Final = "portone"

_ID_FIELDS: Final = {PAYMENT: "imp_uid", EXTERNAL: "merchant_uid", PORTONE: "paymentId"}


class Key(NamedTuple):
    kind: str
    uid: str

    @property
    def id_field(self) -> str:
        """The field, route parameter and query parameter that carry `uid`."""
        return _ID_FIELDS[self.kind]


def payment(imp_uid: str) -> Key:
    return Key(PAYMENT, imp_uid)


def external(merchant_uid: str) -> Key:
    return Key(EXTERNAL, merchant_uid)


def portone(payment_id: str) -> Key:
    return Key(PORTONE, payment_id)
