"""Re-sealing what the store keeps sealed under the newest key, so that older keys can go.

A key can be dropped from ``PII_ENCRYPTION_KEYS`` only once nothing kept is sealed with
it. The store keeps sealed payloads longer than any message lives: a ledger record
holds its issue's payload (``payload``, and ``pending_issue`` behind a partial refund)
for ``LEDGER_RETENTION`` after the job ends, and for as long as it has not ended; a
dead message (``cash_receipt:parked``) keeps its body's payloads sealed for 7 days.
:func:`reseal` rewrites each of them under the newest key (``cashreceipt reseal``).

Each record is rewritten by one script that writes a field only if it still holds
what was read (a compare-and-set): a worker that wrote the field meanwhile (a claim
stores its message's payload, sealed under the newest key) is never overwritten, and
the record is read again. Running it twice changes nothing the second time. Nothing
else the store keeps is sealed: ingress dead letters, events and histories hold
payloads masked (``<sealed>``), never a token.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from worker.adapters.store import lua
from worker.adapters.store.keys import DEAD_MESSAGES_KEY, JOB_PREFIX, LEDGER_PREFIX
from worker.adapters.store.redis_client import as_text
from worker.core.masking import SEALED_FIELDS, shown_text
from worker.core.ports import Sealing
from worker.core.schemas import PayloadUnreadable, resealed

#: How many times a record a worker keeps changing is read again before it is left.
ATTEMPTS = 3
#: How deep a dead message's body is searched for sealed payloads.
_DEPTH = 6


@dataclass
class Resealed:
    """What a pass did. ``unreadable``: where something sealed opens with no configured
    key (an ``imp_uid``, or a parked message's task id; never a value)."""

    records: int = 0
    parked: int = 0
    unchanged: int = 0
    #: Records a worker kept changing under the pass: read again by the next run.
    busy: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Everything kept sealed is sealed under the newest key: older keys may go."""
        return not self.busy and not self.unreadable


def reseal(client: redis.Redis, sealer: Sealing) -> Resealed:
    """Re-seal every sealed payload the store keeps under ``sealer``'s newest key."""
    done = Resealed()
    record_script = client.register_script(lua.source("reseal_record"))
    for key in _ledger_records(client):
        _reseal_record(client, record_script, key, sealer, done)
    parked_script = client.register_script(lua.source("reseal_parked"))
    for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1):
        _reseal_parked(parked_script, as_text(item), sealer, done)
    return done


def _ledger_records(client: redis.Redis) -> Iterator[str]:
    """Every job's record: the hashes under the ledger's prefixes (a layout-1 index under
    the same prefix is another type, and is passed over)."""
    for prefix in (LEDGER_PREFIX, JOB_PREFIX):
        for key in client.scan_iter(match=f"{prefix}*", count=1000, _type="hash"):
            yield as_text(key)


def _reseal_record(
    client: redis.Redis, script: Any, key: str, sealer: Sealing, done: Resealed
) -> None:
    imp_uid = key.removeprefix(LEDGER_PREFIX)  # a V1 record's imp_uid; else the whole key
    for _ in range(ATTEMPTS):
        raw = client.hgetall(key)
        pairs: list[str] = []
        try:
            for name, value in raw.items():
                text = as_text(value)
                again = _resealed_json(text, sealer)
                if again is not None:
                    pairs += [as_text(name), text, again]
        except PayloadUnreadable:
            done.unreadable.append(imp_uid)
            return
        if not pairs:
            done.unchanged += 1
            return
        if int(script(keys=[key], args=pairs)) == len(pairs) // 3:
            done.records += 1
            return
    done.busy.append(imp_uid)


def _resealed_json(text: str, sealer: Sealing) -> str | None:
    """A record field holding a sealed payload, re-sealed; None: not one, or already newest."""
    if not text.startswith("{") or not any(name in text for name in SEALED_FIELDS):
        return None
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    again = resealed(payload, sealer)
    return json.dumps(again) if again is not None else None


def _reseal_parked(script: Any, item: str, sealer: Sealing, done: Resealed) -> None:
    try:
        record = json.loads(item)
    except ValueError:
        return
    envelope = record.get("envelope") if isinstance(record, dict) else None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("body"), str):
        return
    body: str = envelope["body"]
    base64_body = (envelope.get("properties") or {}).get("body_encoding") == "base64"
    try:
        decoded = json.loads(base64.b64decode(body, validate=True) if base64_body else body)
        again = _resealed_value(decoded, sealer, _DEPTH)
    except (binascii.Error, ValueError, RecursionError):
        return  # not a body of payloads (those are kept decodable)
    except PayloadUnreadable:
        done.unreadable.append(f"parked {record.get('id')}")
        return
    if again is None:
        done.unchanged += 1
        return
    text = json.dumps(again, ensure_ascii=False)
    encoded = base64.b64encode(text.encode()).decode("ascii") if base64_body else text
    replaced = {**record, "envelope": {**envelope, "body": encoded}}
    if int(script(keys=[DEAD_MESSAGES_KEY], args=[item, shown_text(json.dumps(replaced))])):
        done.parked += 1


def _resealed_value(value: Any, sealer: Sealing, depth: int) -> Any | None:
    """``value`` with every sealed payload in it re-sealed; None: nothing changed."""
    if depth <= 0 or not isinstance(value, dict | list):
        return None
    items = list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    copy: Any = dict(value) if isinstance(value, dict) else list(value)
    changed = False
    for index, item in items:
        again = _resealed_value(item, sealer, depth - 1)
        if again is not None:
            copy[index], changed = again, True
    if isinstance(copy, dict) and copy.keys() & SEALED_FIELDS:
        sealed = resealed(copy, sealer)
        if sealed is not None:
            copy, changed = sealed, True
    return copy if changed else None
