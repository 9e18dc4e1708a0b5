"""The sandbox as an oracle: duplicate receipts it may allow, and requests sent blind.

A client that re-sends a POST without looking is safe only while the provider refuses a second
receipt. To see a double issue, the sandbox can accept it (`allow_duplicates`), and it counts, in
every mode, the requests a client sent although a lookup had already told it they were wrong:
a POST after a lookup showed an active receipt, a DELETE after one showed none. Payments and
external sales are audited alike, each under its own key (keys.py).

"Already told" is about causality, not about the order of processing: a lookup counts only once
its answer has been written to the client, and only for requests that arrive after that, while
the answer still holds. Whether a payment (or an external sale) has a receipt flips on a POST that
creates the first active one, on a DELETE that cancels the last, or on an admin seed; each flip
starts a new epoch, and a lookup's answer is current only in the epoch it was made in. The server
runs every handler on one asyncio thread, so "arrives after" is simply "starts being handled
after".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from iamport_sandbox.keys import EXTERNAL, PAYMENT, Key


@dataclass(frozen=True, slots=True)
class Shown:
    """What one lookup's answer told the client: receipt active or not, as of an epoch."""

    active: bool
    epoch: int


@dataclass(slots=True)
class Figures:
    """One payment's or one external sale's figures."""

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
    """Receipt counts and blind requests per key; see the module docstring."""

    def __init__(self, *, allow_duplicates: bool = False) -> None:
        self.allow_duplicates = allow_duplicates
        self.figures: dict[Key, Figures] = {}

    def clear(self) -> None:
        self.figures.clear()

    def _of(self, key: Key) -> Figures:
        audit = self.figures.get(key)
        if audit is None:
            audit = self.figures[key] = Figures()
        return audit

    def shown(self, key: Key, *, active: bool) -> Shown:
        """What a lookup made now shows; it counts once `answered` is told it reached the client."""
        return Shown(active=active, epoch=self._of(key).epoch)

    def answered(self, key: Key, shown: Shown) -> None:
        """A lookup's answer has been written. Of two answers, the one from the later epoch wins."""
        audit = self._of(key)
        if audit.shown is None or shown.epoch >= audit.shown.epoch:
            audit.shown = shown

    def arrived(self, key: Key, *, issuing: bool) -> bool:
        """Judge a request to issue (a POST) or to cancel (a DELETE) as it arrives; True (and
        counted) when blind."""
        audit = self._of(key)
        shown = audit.shown
        if shown is None or shown.epoch != audit.epoch:
            return False
        if issuing and shown.active:
            audit.blind_posts += 1
            return True
        if not issuing and not shown.active:
            audit.blind_deletes += 1
            return True
        return False

    def changed(self, key: Key, *, was_active: bool, is_active: bool) -> None:
        """Whether the key has an active receipt may have changed: a flip starts a new epoch."""
        if was_active != is_active:
            self._of(key).epoch += 1

    def created(self, key: Key) -> None:
        audit = self._of(key)
        audit.created += 1
        audit.active += 1
        audit.max_active = max(audit.max_active, audit.active)

    def cancelled(self, key: Key) -> None:
        self._of(key).active -= 1

    def view(self) -> dict[str, Any]:
        """Payments at the top level, as before external receipts existed; those in `external`."""
        return {
            "allow_duplicates": self.allow_duplicates,
            **self._section(PAYMENT, "payments"),
            "external": self._section(EXTERNAL, "merchant_uids"),
        }

    def _section(self, kind: str, listing: str) -> dict[str, Any]:
        of_kind = {key.uid: audit for key, audit in self.figures.items() if key.kind == kind}
        return {
            "blind_posts": sum(a.blind_posts for a in of_kind.values()),
            "blind_deletes": sum(a.blind_deletes for a in of_kind.values()),
            "receipts_created": sum(a.created for a in of_kind.values()),
            "double_active": sorted(uid for uid, a in of_kind.items() if a.max_active > 1),
            listing: {
                uid: audit.view()
                for uid, audit in of_kind.items()
                if audit.created or audit.blind_posts or audit.blind_deletes
            },
        }
