"""Dead entries: ingress stream entries that can never become a job, set aside.

The ingress (:mod:`worker.ingress`) reads its stream with a consumer group. An entry it
cannot turn into a job (not JSON, an invalid payload, an unknown ``type``) ends in the
list ``cash_receipt:dead:ingress`` (newest first; ``cashreceipt dead`` lists it through
:func:`worker.adapters.store.views.list_dead_entries`), with its personal fields masked
and its data capped. The record's layout, the list's limit and the transaction that
keeps an entry and deletes it from the stream are the store's, as are the other dead
letters' (:mod:`worker.adapters.store.dead_messages`, the ledger's dead jobs).

:class:`IngressEntries` is the store's side of the ingress's consumer group: an entry is
acknowledged and deleted in one transaction, the stream holding identifiers that a
handled entry has no reason to keep; a malformed one is set aside in that same
transaction, so that, handled again after a crash, it adds no second dead letter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime

import redis

from worker.adapters.store import lua
from worker.adapters.store.keys import DEAD_ENTRIES_KEY
from worker.core.masking import mask_payload, mask_text

log = logging.getLogger(__name__)

#: A flood of garbage must not fill a noeviction Redis; the oldest beyond this
#: are trimmed, and the trim is logged.
DEAD_ENTRIES_LIMIT = 10_000
#: The most of an entry's data a dead letter keeps.
DATA_LIMIT = 64 * 1024
#: A consumer with nothing pending and idle this long is gone; its name is removed
#: from the group, so that restarts (a new ``hostname-pid`` each) do not pile up.
GONE_CONSUMER_IDLE_MS = 3600 * 1000


class IngressEntries:
    """One consumer's hold on the ingress stream's group: ack and delete, set aside, forget."""

    def __init__(self, client: redis.Redis, *, stream: str, group: str, consumer: str) -> None:
        self._redis = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._forget = client.register_script(lua.source("forget_gone_consumers"))

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
            "type": mask_text(kind[:100]) if kind is not None else None,
            "imp_uid": imp_uid,
            "reason": reason,
            "errors": dict(errors),
            "data": _shown_data(raw, data),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(DEAD_ENTRIES_KEY, json.dumps(record, ensure_ascii=False))
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


def _shown_data(raw: bytes | None, data: object) -> object:
    """What a dead letter shows of the entry's data: personal fields masked, size capped."""
    if isinstance(data, Mapping):
        shown = mask_payload(data)
        if len(json.dumps(shown, ensure_ascii=False)) <= DATA_LIMIT:
            return shown
    if raw is None:
        return None
    return mask_text(raw[:DATA_LIMIT].decode("utf-8", "replace"))
