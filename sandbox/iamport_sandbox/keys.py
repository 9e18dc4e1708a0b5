"""What a receipt belongs to: an i'mport payment, or a cash sale made outside i'mport.

A payment's receipts are reached by its imp_uid, an external sale's by the merchant's own
merchant_uid. The two are chosen by different parties from overlapping sets of strings, so the
imp_uid `x` and the merchant_uid `x` are unrelated. Every map of state, faults and audit figures
is keyed by both the kind and the id, which no choice of ids can make collide.
"""

from __future__ import annotations

from typing import Final, NamedTuple

PAYMENT: Final = "payment"
EXTERNAL: Final = "external"


class Key(NamedTuple):
    kind: str
    uid: str

    @property
    def id_field(self) -> str:
        """The field, route parameter and query parameter that carry `uid`."""
        return "imp_uid" if self.kind == PAYMENT else "merchant_uid"


def payment(imp_uid: str) -> Key:
    return Key(PAYMENT, imp_uid)


def external(merchant_uid: str) -> Key:
    return Key(EXTERNAL, merchant_uid)
