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

PortOne V2's paymentIds are audited the same way (a cancel there is a POST, judged as a DELETE
is), with one more kind of blind POST: a POST to issue sent after an earlier one went unanswered
(dropped, hung up on, answered by a gateway rather than the API) with no lookup answered since,
unless it carries that earlier POST's Idempotency-Key, which PortOne documents as the way to
learn its outcome. V2's figures are recounted from its receipts after every change (`recount`),
so receipts it seeds count too.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from iamport_sandbox.keys import EXTERNAL, PAYMENT, PORTONE, Key


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
    # V2: POSTs to issue whose answer the client has not had, by ticket: their Idempotency-Key.
    open_posts: dict[int, str | None] = field(default_factory=dict)
    blind_retries: int = 0

    def view(self) -> dict[str, int]:
        return {
            "created": self.created,
            "active": self.active,
            "max_active": self.max_active,
            "blind_posts": self.blind_posts,
            "blind_deletes": self.blind_deletes,
        }

    def portone_view(self) -> dict[str, int]:
        """V2's figures: a cancel is a POST there, and blind retries are counted apart too."""
        figures = self.view()
        figures["blind_cancels"] = figures.pop("blind_deletes")
        figures["blind_retries"] = self.blind_retries
        return figures


class Audit:
    """Receipt counts and blind requests per key; see the module docstring."""

    def __init__(self, *, allow_duplicates: bool = False) -> None:
        self.allow_duplicates = allow_duplicates
        self.figures: dict[Key, Figures] = {}
        self._tickets = itertools.count(1)

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
        # Whatever the earlier POSTs did, the client has looked since.
        audit.open_posts.clear()

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

    def post_arrived(
        self, key: Key, idempotency_key: str | None, *, blind: bool
    ) -> tuple[int, bool]:
        """A V2 POST to issue arrives (`blind`: already counted by `arrived`). Returns its ticket
        for `post_told`, and whether it retries an unanswered POST blind: one with no
        Idempotency-Key, or another key than an unanswered POST's, and no lookup since."""
        audit = self._of(key)
        retry = any(
            idempotency_key is None or other != idempotency_key
            for other in audit.open_posts.values()
        )
        if retry:
            audit.blind_retries += 1
            if not blind:
                audit.blind_posts += 1
        ticket = next(self._tickets)
        audit.open_posts[ticket] = idempotency_key
        return ticket, retry

    def post_told(self, key: Key, ticket: int, *, answered: bool, settled: bool) -> None:
        """The POST's end. Unanswered, it stays open. Answered by the API, it closes; if that
        answer was its key's outcome (the work's, or a replay), every POST under the key does."""
        audit = self._of(key)
        if not answered:
            return
        idempotency_key = audit.open_posts.pop(ticket, None)
        if settled and idempotency_key is not None:
            for other, sent in list(audit.open_posts.items()):
                if sent == idempotency_key:
                    del audit.open_posts[other]

    def recount(self, key: Key, *, active: int, created: int = 0) -> None:
        """V2: `created` receipts came to exist and `active` are active now; a change of whether
        any is active starts a new epoch."""
        audit = self._of(key)
        if (audit.active > 0) != (active > 0):
            audit.epoch += 1
        audit.created += created
        audit.active = active
        audit.max_active = max(audit.max_active, active)

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
        """Payments at the top level, as before external receipts existed; those in `external`,
        V2's paymentIds in `portone`."""
        return {
            "allow_duplicates": self.allow_duplicates,
            **self._section(PAYMENT, "payments", Figures.view),
            "external": self._section(EXTERNAL, "merchant_uids", Figures.view),
            "portone": self._section(PORTONE, "payment_ids", Figures.portone_view),
        }

    def _section(
        self, kind: str, listing: str, view: Callable[[Figures], dict[str, int]]
    ) -> dict[str, Any]:
        of_kind = {key.uid: view(audit) for key, audit in self.figures.items() if key.kind == kind}
        blind = [name for name in view(Figures()) if name.startswith("blind_")]
        totals: Counter[str] = Counter()
        for figures in of_kind.values():
            totals.update(figures)
        return {
            **{name: totals[name] for name in blind},
            "receipts_created": totals["created"],
            "double_active": sorted(uid for uid, f in of_kind.items() if f["max_active"] > 1),
            listing: {
                uid: figures
                for uid, figures in of_kind.items()
                if figures["created"] or any(figures[name] for name in blind)
            },
        }
