"""Layout 1 to layout 2 (issue 14): what an operator runs, and each worker at its start.

Layout 1 kept the ledger's indexes and a payment's side keys under the records' own
prefix, so an imp_uid could name one of them (:mod:`worker.adapters.store.keys`). This
moves, one key at a time, each in a script of its own (atomic per key, and idempotent:
a key moved is no longer where it was):

- the members of ``cash_receipt:ledger:due`` and ``cash_receipt:ledger:failed`` into
  ``cash_receipt:index:*``, as receipt keys, when those names hold a sorted set (a hash
  there is the record of the payment whose imp_uid is ``due`` or ``failed``);
- ``cash_receipt:ledger:<imp_uid>:history`` (when a list) and ``:waiters`` (when a set):
  a hash of that name is the record of a payment whose imp_uid ends so, and stays;
- ``cash_receipt:last_event:<imp_uid>`` to ``cash_receipt:status:iamport:<imp_uid>``;
- ``cash_receipt:terminal:<t>:2`` to ``cash_receipt:terminal_then:<t>``, when the event it
  points at is task t's (else it is the marker of a task named ``t:2``, and stays).

Then ``cash_receipt:layout`` says ``2``, and a later start skips the scan. The layout 1
indexes are folded again on every sweep (:func:`fold_layout_1_indexes`, two scripts that
find nothing once they are gone): an older producer or ingress, not yet upgraded, still
adds its jobs there, and the sweeper must see them to re-send a lost message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import redis

from worker.adapters.store import lua
from worker.adapters.store.keys import (
    DEAD_JOBS_KEY,
    DUE_KEY,
    LAYOUT_1,
    LAYOUT_KEY,
    LAYOUT_VERSION,
    LEDGER_PREFIX,
    PAYMENT_RECEIPT_PREFIX,
    TERMINAL_PREFIX,
    history_key,
    second_terminal_key,
    status_key,
    waiters_key,
)
from worker.adapters.store.redis_client import as_text
from worker.config.defaults import JOB_HISTORY_LENGTH

#: Index members moved per script: a batch holds Redis for well under a millisecond.
BATCH = 500


@dataclass(frozen=True)
class Migrated:
    """What one run moved: index members, side keys, status pointers, second markers.

    ``scanned`` is False when the data already said layout 2, and only the layout 1
    indexes were folded.
    """

    index_members: int
    side_keys: int
    status_pointers: int
    markers: int
    scanned: bool

    @property
    def moved(self) -> int:
        """How many members and keys moved in all."""
        return self.index_members + self.side_keys + self.status_pointers + self.markers


def layout_version(client: redis.Redis) -> int:
    """The layout the data says it is in: 1 when nothing says (a release before issue 14)."""
    found = client.get(LAYOUT_KEY)
    return int(as_text(found)) if found is not None else 1


def fold_layout_1_indexes(client: redis.Redis) -> int:
    """Move what layout 1's indexes hold into layout 2's; returns how many members moved."""
    script = client.register_script(lua.source("migrate_index"))
    moved = 0
    for old, new in ((LAYOUT_1.due_key, DUE_KEY), (LAYOUT_1.dead_jobs_key, DEAD_JOBS_KEY)):
        before = _zcard(client, old)
        while int(script(keys=[old, new], args=[PAYMENT_RECEIPT_PREFIX, BATCH])):
            pass
        moved += before - _zcard(client, old)
    return moved


def _zcard(client: redis.Redis, key: str) -> int:
    return int(client.zcard(key)) if as_text(client.type(key)) == "zset" else 0


def migrate(client: redis.Redis, *, stream: str, rescan: bool = False) -> Migrated:
    """Bring the data to layout 2; safe to run again, and beside workers of layout 2.

    ``stream`` is the result stream (``RESULT_STREAM``): a second marker is told from
    another task's marker by the event it points at. ``rescan`` scans the keys even
    when the data says layout 2 already (after an older producer ran against it).
    """
    members = fold_layout_1_indexes(client)
    if layout_version(client) >= LAYOUT_VERSION and not rescan:
        return Migrated(members, 0, 0, 0, scanned=False)
    move_key = client.register_script(lua.source("migrate_key"))
    side = 0
    for suffix, kind, new_name in (
        (LAYOUT_1.history_suffix, "list", history_key),
        (LAYOUT_1.waiters_suffix, "set", waiters_key),
    ):
        for name in _names(client, f"{LEDGER_PREFIX}*{suffix}", kind):
            imp_uid = name[len(LEDGER_PREFIX) : -len(suffix)]
            side += int(move_key(keys=[name, new_name(imp_uid)], args=[kind, JOB_HISTORY_LENGTH]))
    pointers = 0
    for name in _names(client, f"{LAYOUT_1.last_event_prefix}*", "string"):
        imp_uid = name[len(LAYOUT_1.last_event_prefix) :]
        pointers += int(
            move_key(keys=[name, status_key(imp_uid)], args=["string", JOB_HISTORY_LENGTH])
        )
    move_marker = client.register_script(lua.source("migrate_marker"))
    markers = 0
    suffix = LAYOUT_1.second_terminal_suffix
    for name in _names(client, f"{TERMINAL_PREFIX}*{suffix}", "string"):
        task_id = name[len(TERMINAL_PREFIX) : -len(suffix)]
        markers += int(
            move_marker(keys=[name, second_terminal_key(task_id), stream], args=[task_id])
        )
    client.set(LAYOUT_KEY, str(LAYOUT_VERSION))
    return Migrated(members, side, pointers, markers, scanned=True)


def _names(client: redis.Redis, pattern: str, kind: str) -> Iterator[str]:
    """The keys matching ``pattern`` of type ``kind`` (each script checks the type again).

    SCAN may name a key twice; a key moved the first time is not there the second.
    """
    for key in client.scan_iter(match=pattern, count=1000, _type=kind):
        yield as_text(key)
