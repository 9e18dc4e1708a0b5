"""Dead messages: what the worker cannot run, kept where an operator can see it.

Celery drops a message whose task this worker does not know, and one it cannot
decode, after logging its body; kombu's Redis transport stops the worker on a
queue entry that is not even JSON. Here every such message is set aside
instead, in the Redis list ``cash_receipt:parked`` (newest first), with the
reason: a dead letter, like the ledger's dead jobs and the ingress's dead
entries. The names users see keep the word "parked" (the key, the
``parked_at`` fields, ``cashreceipt parked``, the metric); in code these are
dead messages, and "park" means a job's long retry wait in the ledger
(:meth:`worker.adapters.store.ledger.Ledger.park`). ``cashreceipt parked`` lists them;
``cashreceipt parked --requeue`` pushes the readable ones back to their queue,
e.g. once a worker that knows their task is deployed.

Dead messages stay replayable, but hold no personal data in clear: the
body is decoded and every payload in it has its identifier and buyer fields
sealed, as the ledger stores them (masked when no key is configured, which
costs the replay), and every field no schema knows keeps its name but not its
value (a replay never reads it); a body that is not JSON is dropped and kept as
masked text.
The ``argsrepr``/``kwargsrepr`` headers, which a bare producer fills with the
raw arguments, are replaced, and a header no worker reads is shown by name only.
An unreadable entry is kept as masked text.

Records are kept :data:`DEAD_MESSAGE_RETENTION_SECONDS` (7 days): the sweeper drops
older ones (:func:`expire_dead_messages`), and the list itself expires that long
after the last message was kept. At most :data:`DEAD_MESSAGES_LIMIT` are kept.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import redis

from worker.adapters.privacy.sealing import Sealer, SealingUnavailable
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.adapters.store.ledger import FENCE_HEADER
from worker.adapters.store.once import OnceScript
from worker.config.defaults import DEAD_MESSAGE_RETENTION_SECONDS
from worker.core.masking import (
    PERSONAL_FIELDS,
    REDACTED,
    SEALED_FIELDS,
    encodable,
    mask_payload,
    mask_strictly,
    mask_text,
    shown_key,
    shown_text,
    shown_token,
    unknown_fields_redacted,
)
from worker.core.schemas import BUYER_FIELDS

log = logging.getLogger(__name__)

#: A flood of garbage must not fill a noeviction Redis; the oldest beyond this
#: are trimmed, and the trim is logged.
DEAD_MESSAGES_LIMIT = 10_000
RAW_LIMIT = 64 * 1024
#: How deep a body is searched for payloads to seal.
_DEPTH = 4
#: The fields that make an object a payload, wherever it sits in a body.
_PAYLOAD_MARKS = frozenset({"imp_uid", *PERSONAL_FIELDS, *SEALED_FIELDS})


def dead_message_record(
    *,
    reason: str,
    queue: str | None,
    envelope: Mapping[str, Any] | None,
    raw: bytes | str | None,
    sealer: Sealer | None = None,
) -> dict[str, Any]:
    """The JSON-ready record of one dead message, with no personal data in clear.

    ``sealer`` seals the payloads in the body; without one (or without a key)
    their personal fields are masked instead.
    """
    headers = dict(envelope.get("headers") or {}) if envelope else {}
    clean: dict[str, Any] | None = None
    body_text: str | None = None
    if envelope is not None:
        clean = dict(envelope)
        if headers:
            clean["headers"] = _shown_headers(headers)
        clean, body_text = _sealed_body(clean, sealer)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if clean is None and text:
        body_text = _masked_entry(text)
    now = time.time()
    return {
        "parked_at": datetime.fromtimestamp(now, UTC)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z"),
        "parked_at_ms": int(now * 1000),
        "reason": mask_strictly(reason),
        "queue": queue,
        "task": _shown_field(headers, "task"),
        "id": _shown_field(headers, "id"),
        "envelope": clean,
        "raw": mask_strictly(body_text[:RAW_LIMIT]) if body_text else None,
    }


def _shown_field(headers: Mapping[str, Any], key: str) -> str | None:
    value = _shown_header(key, headers.get(key))
    return value if isinstance(value, str) and value != REDACTED else None


def _shown_id(value: Any) -> Any:
    """A task id as the producer chose it (the events carry it so), when it is text that can
    be stored; else redacted, and the record is not replayable."""
    if value is None or (isinstance(value, str) and encodable(value) and len(value) <= 200):
        return value
    return REDACTED


#: The headers a task message may carry that a worker reads: Celery's protocol 2
#: and the ledger's fence. Any other header is the producer's own, and may hold anything.
KNOWN_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index", "retries",
        "timelimit", "root_id", "parent_id", "origin", "ignore_result",
        "replaced_task_nesting", "stamped_headers", "stamps", FENCE_HEADER,
    }
)  # fmt: skip


#: Headers whose values are ids or names: shown as :func:`shown_token` shows them. Not
#: ``id``: the task id is the message's identity, which every event publishes and a
#: replay must keep (``_shown_id``).
_TOKEN_HEADERS = frozenset({"lang", "task", "shadow", "root_id", "parent_id", "group", "origin"})
#: Headers that hold a time, as Celery writes it (ISO 8601).
_TIME_HEADERS = frozenset({"eta", "expires"})
#: What a replay cannot do without: a record whose own has to be redacted is not replayable.
_REPLAY_HEADERS = ("task", "id")


def _shown_headers(headers: Mapping[Any, Any]) -> dict[str, Any]:
    """The headers a replay needs, by allow-list: each known one only when its value has
    the shape Celery gives it (a UUID, a task's name, a number, a time); the argument
    reprs, which a bare producer fills with the raw arguments, and every header no
    worker reads, by name only.

    A producer writes every header as it likes, and a ``shadow``, a ``root_id`` or a
    ``task`` can hold a phone number as easily as a payload field can.
    """
    shown = unknown_fields_redacted(headers, known=KNOWN_HEADERS)
    for key in shown.keys() & KNOWN_HEADERS:
        shown[key] = _shown_header(key, shown[key])
    return {**shown, "argsrepr": REDACTED, "kwargsrepr": REDACTED}


def _shown_header(key: str, value: Any) -> Any:
    if key in _TOKEN_HEADERS:
        return shown_token(value)
    if key == "id":
        return _shown_id(value)
    if value is None or isinstance(value, bool | int | float) or _is_time(key, value):
        return value
    if _is_timelimit(key, value):
        return list(value)
    if isinstance(value, list | dict) and not value:
        return value  # an empty stamps or stamped_headers
    return REDACTED


def _is_time(key: str, value: Any) -> bool:
    """``eta`` or ``expires`` as Celery writes them: ISO 8601."""
    if key not in _TIME_HEADERS or not isinstance(value, str) or len(value) > 40:
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_timelimit(key: str, value: Any) -> bool:
    """Celery's ``timelimit``: ``[soft, hard]``, each a number of seconds or None."""
    return (
        key == "timelimit"
        and isinstance(value, list | tuple)
        and len(value) <= 2
        and all(item is None or isinstance(item, int | float) for item in value)
    )


def replayable(record: Mapping[str, Any]) -> bool:
    """Whether a dead message can go back to its queue: a readable body, a queue, and the
    headers a worker needs kept as they were sent."""
    envelope = record.get("envelope")
    if not isinstance(envelope, Mapping) or envelope.get("body") is None:
        return False
    headers = envelope.get("headers") or {}
    kept = all(headers.get(key) not in (None, REDACTED) for key in _REPLAY_HEADERS)
    return bool(record.get("queue")) and kept


def _sealed_body(
    envelope: dict[str, Any], sealer: Sealer | None
) -> tuple[dict[str, Any], str | None]:
    """The envelope with its body's payloads sealed; or without a body, and its masked text.

    A body we cannot read as JSON cannot be sealed field by field, so it is
    not kept: only its masked text is, and the message is no longer replayable.
    """
    body = envelope.get("body")
    if body is None:
        return envelope, None
    base64_body = (envelope.get("properties") or {}).get("body_encoding") == "base64"
    try:
        raw = base64.b64decode(body, validate=True) if base64_body else str(body).encode()
        decoded = json.loads(raw)
    except (binascii.Error, TypeError, ValueError, RecursionError):
        text = body if isinstance(body, str) else json.dumps(body, default=str)
        if base64_body:
            with contextlib.suppress(binascii.Error, TypeError, ValueError):
                text = base64.b64decode(body).decode("utf-8", "replace")
        return {**envelope, "body": None}, text
    text = json.dumps(_seal_payloads(decoded, sealer, _DEPTH), ensure_ascii=False)
    if not encodable(text):
        # A lone surrogate ("\ud800" in the producer's JSON): kept as the escape it came as.
        text = json.dumps(_seal_payloads(decoded, sealer, _DEPTH))
    sealed = text.encode()
    encoded = base64.b64encode(sealed).decode("ascii") if base64_body else sealed.decode()
    return {**envelope, "body": encoded}, None


def _masked_entry(text: str) -> str:
    """An unreadable entry's text, with any JSON in it shown decoded and masked.

    Such an entry is not replayable, so nothing needs sealing: its personal
    fields are masked, and a base64 body inside it is decoded first (else the
    identifier would sit in it, encoded but in clear).
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return text
    return json.dumps(_seal_payloads(_decoded_bodies(value, _DEPTH), None, _DEPTH), default=str)


def _decoded_bodies(value: Any, depth: int) -> Any:
    """``value`` with each base64 JSON ``body`` replaced by what it encodes."""
    if depth <= 0:
        return value
    if isinstance(value, list):
        return [_decoded_bodies(item, depth - 1) for item in value]
    if not isinstance(value, dict):
        return value
    decoded = {key: _decoded_bodies(item, depth - 1) for key, item in value.items()}
    body = decoded.get("body")
    if isinstance(body, str):
        with contextlib.suppress(binascii.Error, ValueError, RecursionError):
            decoded["body"] = _decoded_bodies(json.loads(base64.b64decode(body)), depth - 1)
    return decoded


def _seal_payloads(value: Any, sealer: Sealer | None, depth: int, payload: bool = False) -> Any:
    """``value`` with every payload's personal fields sealed (or masked), its unknown ones
    redacted, and everything else shown only as free text is.

    A payload is a task's argument (an object in the args or kwargs of a ``[args,
    kwargs, embed]`` body), or any object with a payload's id or personal
    fields. Fields no schema knows are never read by a replay: their values go.
    Outside payloads (Celery's embed, a producer's garbage) text is masked as
    :func:`~worker.core.masking.mask_text` masks it, and what sits deeper than
    any payload does is not kept.
    """
    if not isinstance(value, list | dict):
        return mask_text(value) if isinstance(value, str) else value
    if depth <= 0:
        # Deeper than any task message's payload: nothing a replay reads, so nothing shown.
        return REDACTED
    if isinstance(value, list):
        if len(value) == 3 and isinstance(value[0], list) and isinstance(value[1], dict):
            return _sealed_task_body(value, sealer, depth)
        return [_seal_payloads(item, sealer, depth - 1) for item in value]
    if payload or value.keys() & _PAYLOAD_MARKS:
        # A payload's fields are plain values; a known one holding a structure is not
        # something a replay accepts, and could hold anything.
        flat = {
            key: REDACTED if isinstance(item, list | dict) else item for key, item in value.items()
        }
        return _sealed_payload(flat, sealer)
    return {shown_key(key): _seal_payloads(item, sealer, depth - 1) for key, item in value.items()}


def _sealed_task_body(body: list[Any], sealer: Sealer | None, depth: int) -> list[Any]:
    """A task message's ``[args, kwargs, embed]``: every argument, by position or by name,
    is a payload."""
    args, kwargs, embed = body
    return [
        [_seal_payloads(arg, sealer, depth - 2, payload=True) for arg in args],
        {
            shown_key(key): _seal_payloads(arg, sealer, depth - 2, payload=True)
            for key, arg in kwargs.items()
        },
        _seal_payloads(embed, sealer, depth - 1),
    ]


def _sealed_payload(payload: dict[str, Any], sealer: Sealer | None) -> dict[str, Any]:
    """One payload, replayable when it can be: sealed, unknown fields redacted; else masked."""
    if not payload.keys() & {"identifier", *BUYER_FIELDS}:
        return unknown_fields_redacted(payload)
    try:
        return unknown_fields_redacted(_sealed_fields(payload, sealer))
    except (SealingUnavailable, UnicodeEncodeError):
        # No key; or a lone surrogate, which no replay would accept: masked.
        return mask_payload(payload)


def _sealed_fields(payload: dict[str, Any], sealer: Sealer | None) -> dict[str, Any]:
    """The payload as the ledger stores it: identifier and buyer fields sealed.

    A field that cannot take the sealed form (its sealed twin is already
    there, so a replay refuses it anyway) is masked.
    """
    if sealer is None:
        raise SealingUnavailable("no key to seal with")
    sealed = dict(payload)
    if "identifier" in sealed and "identifier_sealed" not in sealed:
        sealed["identifier_sealed"] = sealer.seal(str(sealed.pop("identifier")))
    buyer = {key: sealed.pop(key) for key in BUYER_FIELDS if key in sealed}
    if buyer and "buyer_sealed" not in sealed:
        sealed["buyer_sealed"] = sealer.seal(json.dumps(buyer, ensure_ascii=False))
    leftover = {key: payload[key] for key in ("identifier", *buyer) if key in payload}
    if "identifier_sealed" in payload or "buyer_sealed" in payload:
        sealed.update(mask_payload({k: v for k, v in leftover.items() if f"{k}_sealed" in payload}))
    return sealed


def keep_dead_message(client: redis.Redis, record: Mapping[str, Any]) -> None:
    """Keep ``record``; trim the list at :data:`DEAD_MESSAGES_LIMIT` and drop expired records."""
    length, _ = _keep(client, shown_text(json.dumps(record, ensure_ascii=False)))
    log.error(
        "parked a message (task %s, id %s, queue %s): %s",
        record.get("task"),
        record.get("id"),
        record.get("queue"),
        record.get("reason"),
    )
    if length >= DEAD_MESSAGES_LIMIT:
        log.warning(
            "%s is at its limit of %d; the oldest are trimmed",
            DEAD_MESSAGES_KEY,
            DEAD_MESSAGES_LIMIT,
        )


def expire_dead_messages(client: redis.Redis) -> int:
    """Drop dead messages older than :data:`DEAD_MESSAGE_RETENTION_SECONDS`; returns how many."""
    return _keep(client, "")[1]


def _keep(client: redis.Redis, record: str) -> tuple[int, int]:
    script = OnceScript(client, "dead_message")
    # The script drops what is older than the retention by Redis's clock (no test offset).
    length, dropped = script(
        keys=[DEAD_MESSAGES_KEY],
        args=[record, DEAD_MESSAGES_LIMIT, DEAD_MESSAGE_RETENTION_SECONDS, 0],
    )
    return int(length), int(dropped)


def list_dead_messages(client: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    """The newest dead messages."""
    return [json.loads(item) for item in client.lrange(DEAD_MESSAGES_KEY, 0, limit - 1)]


#: Sends one dead message's envelope to a queue on a broker that is not this Redis.
Publish = Callable[[str, Mapping[str, Any]], None]


def requeue_dead_messages(client: redis.Redis, publish: Publish | None = None) -> int:
    """Push every dead message's envelope back to its queue; unreadable ones (:func:`replayable`)
    stay. Returns how many.

    On a Redis broker the envelope goes back onto the queue's list as it was.
    On another broker (RabbitMQ) ``publish`` sends it, and only then is the
    record dropped: a failed publish leaves it kept.
    """
    moved = 0
    for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1):
        record = json.loads(item)
        if not replayable(record):
            continue
        if publish is not None:
            publish(record["queue"], record["envelope"])
            client.lrem(DEAD_MESSAGES_KEY, 1, item)  # type: ignore[arg-type]  # the exact bytes listed
        else:
            pipe = client.pipeline(transaction=True)
            pipe.lpush(record["queue"], json.dumps(record["envelope"]))
            pipe.lrem(DEAD_MESSAGES_KEY, 1, item)  # type: ignore[arg-type]  # the exact bytes listed
            pipe.execute()
        moved += 1
    return moved


def portable_envelope(message: Any) -> dict[str, Any] | None:
    """A kombu message from any transport as the envelope kombu's Redis transport stores.

    Redis messages carry that envelope already (``message._raw``); an AMQP
    message is rebuilt from its parts, so that it can be kept, listed and
    republished the same way. None when the body is not bytes or text.
    """
    raw = getattr(message, "_raw", None)
    if isinstance(raw, dict):
        return raw
    body = message.body
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, bytes):
        return None
    properties = getattr(message, "properties", None) or {}
    info = message.delivery_info or {}
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-type": message.content_type,
        "content-encoding": message.content_encoding,
        "headers": dict(message.headers or {}),
        "properties": {
            "correlation_id": properties.get("correlation_id"),
            "reply_to": properties.get("reply_to"),
            "delivery_mode": 2,
            "delivery_info": {
                "exchange": info.get("exchange") or "",
                "routing_key": info.get("routing_key"),
            },
            "priority": properties.get("priority") or 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def publisher(app: Any) -> Publish:
    """:data:`Publish` through a Celery app's broker connection (RabbitMQ)."""

    def publish(queue: str, envelope: Mapping[str, Any]) -> None:
        properties = envelope.get("properties") or {}
        with app.producer_or_acquire() as producer:
            producer.publish(
                base64.b64decode(envelope["body"]),
                # The default exchange routes by queue name, whatever binds the queue.
                exchange="",
                routing_key=queue,
                headers=dict(envelope.get("headers") or {}),
                content_type=envelope.get("content-type"),
                content_encoding=envelope.get("content-encoding"),
                correlation_id=properties.get("correlation_id"),
                delivery_mode=2,
                retry=True,
            )

    return publish
