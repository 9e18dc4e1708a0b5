"""The sandbox as an oracle: duplicate receipts it may allow, and requests sent blind.

A client that re-sends a POST without looking is safe only while the provider refuses a second
receipt. To see a double issue, the sandbox can accept it (`allow_duplicates`), and it counts, in
every mode, the requests a client sent although a lookup had already told it they were wrong:
a POST after a lookup showed an active receipt, a DELETE after one showed none.

"Already told" is about causality, not about the order of processing: a lookup counts only once
its answer has been written to the client, and only for requests that arrive after that, while
the answer still holds. Whether a payment has a receipt flips on a POST that creates the first
active one, on a DELETE that cancels the last, or on an admin seed; each flip starts a new epoch,
and a lookup's answer is current only in the epoch it was made in. The server runs every handler
on one asyncio thread, so "arrives after" is simply "starts being handled after".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Shown:
    """What one lookup's answer told the client: receipt active or not, as of an epoch."""

    active: bool
    epoch: int


@dataclass(slots=True)
class PaymentAudit:
    """One imp_uid's figures."""

    created: int = 0
    active: int = 0
    max_active: int = 0
    blind_posts: int = 0
    blind_deletes: int = 0
    epoch: int = 0
    shown: Shown | None = None

    def view(self) -> dict[str, int]:
        return {
            "created": self.created,
            "active": self.active,
            "max_active": self.max_active,
            "blind_posts": self.blind_posts,
            "blind_deletes": self.blind_deletes,
        }


class Audit:
    """Per-imp_uid receipt counts and blind requests; see the module docstring."""

    def __init__(self, *, allow_duplicates: bool = False) -> None:
        self.allow_duplicates = allow_duplicates
        self.payments: dict[str, PaymentAudit] = {}

    def clear(self) -> None:
        self.payments.clear()

    def _of(self, imp_uid: str) -> PaymentAudit:
        audit = self.payments.get(imp_uid)
        if audit is None:
            audit = self.payments[imp_uid] = PaymentAudit()
        return audit

    def shown(self, imp_uid: str, *, active: bool) -> Shown:
        """What a lookup made now shows; it counts once `answered` is told it reached the client."""
        return Shown(active=active, epoch=self._of(imp_uid).epoch)

    def answered(self, imp_uid: str, shown: Shown) -> None:
        """A lookup's answer has been written. Of two answers, the one from the later epoch wins."""
        audit = self._of(imp_uid)
        if audit.shown is None or shown.epoch >= audit.shown.epoch:
            audit.shown = shown

    def arrived(self, imp_uid: str, method: str) -> bool:
        """Judge a POST or DELETE on a receipt as it arrives; True (and counted) when blind."""
        audit = self._of(imp_uid)
        shown = audit.shown
        if shown is None or shown.epoch != audit.epoch:
            return False
        if method == "POST" and shown.active:
            audit.blind_posts += 1
            return True
        if method == "DELETE" and not shown.active:
            audit.blind_deletes += 1
            return True
        return False

    def changed(self, imp_uid: str, *, was_active: bool, is_active: bool) -> None:
        """Whether the payment has a receipt may have changed: a flip starts a new epoch."""
        if was_active != is_active:
            self._of(imp_uid).epoch += 1

    def created(self, imp_uid: str) -> None:
        audit = self._of(imp_uid)
        audit.created += 1
        audit.active += 1
        audit.max_active = max(audit.max_active, audit.active)

    def cancelled(self, imp_uid: str) -> None:
        self._of(imp_uid).active -= 1

    def view(self) -> dict[str, Any]:
        per_id = {imp_uid: audit.view() for imp_uid, audit in self.payments.items()}
        return {
            "allow_duplicates": self.allow_duplicates,
            "blind_posts": sum(a.blind_posts for a in self.payments.values()),
            "blind_deletes": sum(a.blind_deletes for a in self.payments.values()),
            "receipts_created": sum(a.created for a in self.payments.values()),
            "double_active": sorted(i for i, a in self.payments.items() if a.max_active > 1),
            "payments": {
                imp_uid: view
                for imp_uid, view in per_id.items()
                if view["created"] or view["blind_posts"] or view["blind_deletes"]
            },
        }
