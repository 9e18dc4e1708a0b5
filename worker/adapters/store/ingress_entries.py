"""The ingress stream's consumer group, and its dead entries: the store's side of the ingress.

The ingress (:mod:`worker.ingress`) decides what to do with an entry and when to look
for which; every Redis command it needs is here. It reads its stream with a consumer
group: new entries, its own left pending, and entries idle long enough to take over
(XAUTOCLAIM) from a consumer that died.

A handled entry is acknowledged and deleted in one transaction: the stream holds
identifiers, sealed or not, and an entry that is done has no reason to keep them.

An entry the ingress cannot turn into a job (not JSON, an invalid payload, an unknown
``type``) is set aside in the list ``cash_receipt:dead:ingress`` (newest first;
``cashreceipt dead`` lists it through :func:`worker.adapters.store.views.list_dead_entries`),
with its personal fields masked and its data capped, in the same transaction as its
acknowledgement and deletion: handled again after a crash, it adds no second dead letter.
Its record's layout and the list's limit are the store's, as are the other dead letters'
(:mod:`worker.adapters.store.dead_messages`, the ledger's dead jobs).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis

from worker.adapters.store import lua
from worker.adapters.store.keys import DEAD_ENTRIES_KEY
from worker.adapters.store.redis_client import as_text
from worker.core.contract import PAYMENT_CANCELLED, PAYMENT_CONFIRMED
from worker.core.masking import REDACTED, mask_payload, shown_text

log = logging.getLogger(__name__)

#: A flood of garbage must not fill a noeviction Redis; the oldest beyond this
#: are trimmed, and the trim is logged.
DEAD_ENTRIES_LIMIT = 10_000
#: The most of an entry's data a dead letter keeps.
DATA_LIMIT = 64 * 1024
#: A consumer with nothing pending and idle this long is gone; its name is removed
#: from the group, so that restarts (a new ``hostname-pid`` each) do not pile up.
GONE_CONSUMER_IDLE_MS = 3600 * 1000


#: One entry as read: its id, and its fields (None or empty once it was deleted).
Entry = tuple[str, Mapping[bytes | str, bytes | str] | None]


class IngressEntries:
    """One consumer of the ingress stream's group: read, take over, ack and delete, set aside."""

    def __init__(self, client: redis.Redis, *, stream: str, group: str, consumer: str) -> None:
        self._redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._forget = client.register_script(lua.source("forget_gone_consumers"))

    def ensure_group(self) -> None:
        """Create the stream and the group if needed, from the stream's first entry."""
        try:
            # From "0": entries XADDed before any ingress ever ran are jobs too.
            self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def read_new(self, *, block_ms: int | None) -> list[Entry]:
        """At most one entry never delivered, waiting up to ``block_ms`` (None: not at all)."""
        reply = self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=1, block=block_ms
        )
        return _entries(reply)

    def read_own_pending(self, *, after: str, count: int) -> list[Entry]:
        """This consumer's entries delivered but not acknowledged, from after ``after``."""
        reply = self._redis.xreadgroup(self.group, self.consumer, {self.stream: after}, count=count)
        return _entries(reply)

    def take_over(self, *, idle_ms: int, cursor: str, count: int) -> tuple[str, list[Entry]]:
        """Entries pending at least ``idle_ms`` with any consumer, now this one's (XAUTOCLAIM),
        from ``cursor``; the cursor to go on from ("0-0": the scan is done)."""
        reply = self._redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=idle_ms,
            start_id=cursor,
            count=count,
        )
        return as_text(reply[0]), [(as_text(entry_id), fields) for entry_id, fields in reply[1]]

    def acknowledge(self, entry_id: str) -> None:
        """Acknowledge an entry that was deleted already (nothing left to delete)."""
        self._redis.xack(self.stream, self.group, entry_id)

    def done(self, entry_id: str) -> None:
        """Acknowledge and delete a handled entry, in one transaction."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        pipe.execute()

    def set_aside(
        self,
        entry_id: str,
        *,
        task_id: str,
        kind: str | None,
        imp_uid: str | None,
        reason: str,
        errors: Mapping[str, list[str]],
        raw: bytes | None,
        data: object,
    ) -> None:
        """Keep a malformed entry as a dead letter, then acknowledge and delete it: one MULTI.

        ``kind`` and ``raw`` are the entry's ``type`` and ``data`` fields as read,
        ``data`` what could be parsed of them. The oldest dead letters beyond
        :data:`DEAD_ENTRIES_LIMIT` are trimmed, with a warning.
        """
        record = {
            "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "stream": self.stream,
            "entry_id": entry_id,
            "task_id": task_id,
            "type": shown_type(kind) if kind is not None else None,
            "imp_uid": imp_uid,
            "reason": reason,
            "errors": dict(errors),
            "data": _shown_data(raw, data),
        }
        pipe = self._redis.pipeline(transaction=True)
        # A lone surrogate (JSON's "\ud800") cannot be written as UTF-8: shown as U+FFFD.
        pipe.lpush(DEAD_ENTRIES_KEY, shown_text(json.dumps(record, ensure_ascii=False)))
        pipe.ltrim(DEAD_ENTRIES_KEY, 0, DEAD_ENTRIES_LIMIT - 1)
        pipe.llen(DEAD_ENTRIES_KEY)
        pipe.xack(self.stream, self.group, entry_id)
        pipe.xdel(self.stream, entry_id)
        length = pipe.execute()[2]
        if length >= DEAD_ENTRIES_LIMIT:
            log.warning(
                "%s is at its limit of %d; the oldest are trimmed",
                DEAD_ENTRIES_KEY,
                DEAD_ENTRIES_LIMIT,
            )

    def forget_gone_consumers(self) -> int:
        """Remove the group's consumers idle and empty for an hour, this one aside; how many."""
        return int(
            self._forget(
                keys=[self.stream], args=[self.group, GONE_CONSUMER_IDLE_MS, self.consumer]
            )
        )


#: The entry types a dead letter shows as they are.
SHOWN_TYPES = frozenset({PAYMENT_CONFIRMED, PAYMENT_CANCELLED})
#: An unknown type of this stream's kind (``payment.refunded``): letters and underscores
#: after ``payment.``, so no number, e-mail or dotted name fits.
_TYPE_SHAPE = re.compile(r"payment\.[a-z_]{1,40}")


def shown_type(kind: str) -> str:
    """An entry's type as a dead letter shows it: the reason an operator looks, when it
    is unknown; but it is producer text, so only a payment type's shape is shown."""
    return kind if kind in SHOWN_TYPES or _TYPE_SHAPE.fullmatch(kind) else REDACTED


def _shown_data(raw: bytes | None, data: object) -> object:
    """What a dead letter shows of the entry's data: masked by allow-list, size capped.

    An object too big to keep whole is kept as the start of its masked text, never
    as the raw text: that would show the values of the fields it does not know.
    """
    if isinstance(data, Mapping | list):
        shown: object = (
            mask_payload(data)
            if isinstance(data, Mapping)
            else [mask_payload(item) if isinstance(item, Mapping) else REDACTED for item in data]
        )
        text = json.dumps(shown, ensure_ascii=False)
        return shown if len(text) <= DATA_LIMIT else text[:DATA_LIMIT]
    if raw is None:
        return None
    # Not JSON, or a bare JSON value: nothing in it is known not to be personal.
    return f"{REDACTED} ({len(raw)} bytes)"


def _entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply on one stream: ``[[stream, [(id, fields), ...]]]``."""
    found: Sequence[Any] = [entry for _, entries in reply or [] for entry in entries]
    return [(as_text(entry_id), fields) for entry_id, fields in found]
