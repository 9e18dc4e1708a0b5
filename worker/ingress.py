"""The ingress: payment events from a Redis stream into the ledger and the queue.

Producers in any language ``XADD`` to ``INGRESS_STREAM`` (``payment.events``)
an entry of two fields, ``type`` (``payment.confirmed`` or
``payment.cancelled``) and ``data`` (a JSON object), and are done: XADD is one
command in every Redis client, where a Celery message has to be built by hand.
``cashreceipt ingress`` turns each entry into a job, with the same checks as
the Python helper (:func:`worker.celery.producer.enqueue_issue`).

Nothing is lost. Instances share a consumer group, so each entry goes to one of
them, and Redis keeps it in that consumer's pending list until it is
acknowledged. An entry is acknowledged only once its job is in the ledger and
its message in the queue (or it was set aside as malformed). An entry whose
consumer died stays pending, and another instance takes it over with
XAUTOCLAIM once it has been idle ``INGRESS_CLAIM_IDLE`` seconds. A Redis or
broker failure leaves the entry pending too; this process backs off and tries
it again.

Nothing is done twice. The task id of an entry is derived from the stream and
the entry id (:func:`task_id_for`), so handling the same entry again (after a
crash between the enqueue and the acknowledgement, or when a slow instance's
entry was taken over) sends the same task id again: the ledger keeps the
first ``received`` record, the worker takes "the same task again", and the
terminal event is published once per task id.

Handled entries are deleted (XACK and XDEL in one transaction), not only
acknowledged: the stream holds identifiers, sealed or not, and an entry that
is done has no reason to keep them.

Malformed entries (not JSON, an invalid payload, an unknown ``type``) never
block the stream: each ends in the dead-letter list ``cash_receipt:dead:ingress``
with its personal fields masked and, when an ``imp_uid`` can be read (even from
data no parser accepts whole: :func:`~worker.core.schemas.top_level_strings`), in
the failure event its task would have published. Then it is deleted like any other.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import FrameType, ModuleType
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from worker.adapters.observe.logs import setup_process_logging
from worker.adapters.privacy.sealing import Sealer, SealingUnavailable
from worker.adapters.store.durability import NotDurable, check_durability
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.ingress_entries import Entry, IngressEntries
from worker.adapters.store.keys import DEAD_ENTRIES_KEY
from worker.adapters.store.redis_client import INGRESS_CLIENT_PREFIX, redis_client
from worker.celery import app
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.config.load import load_celeryconfig
from worker.core.contract import PAYMENT_CANCELLED, PAYMENT_CONFIRMED
from worker.core.events import CANCEL_FAILED, FAILED, invalid_detail
from worker.core.schemas import (
    InvalidPayload,
    readable_job,
    readable_merchant_uid,
    top_level_strings,
)
from worker.core.urls import redact_url

log = logging.getLogger("worker.ingress")


#: Fixed for good: an entry handled before and after a deploy must get the same task id.
TASK_ID_NAMESPACE = uuid.UUID("6b0d3a52-8f1e-5c47-9a2d-5e3c1b7f4a90")

#: Pending entries (ours after a failure, or a dead consumer's) are read this many at a time.
RECOVERY_BATCH = 10
#: Backoff after Redis or the broker failed, doubling up to the cap, in seconds.
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 10.0

#: Redis or the broker failed: the entry stays pending and is tried again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OperationalError, OSError)


def task_id_for(stream: str, entry_id: str) -> str:
    """The task id of a stream entry: the same every time the entry is handled."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{stream}:{entry_id}"))


class Malformed(Exception):
    """An entry that can never become a job; ``reason`` is a short code, ``errors`` by field."""

    def __init__(self, reason: str, errors: Mapping[str, list[str]]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.errors = {key: list(messages) for key, messages in errors.items()}


class Ingress:
    """Reads the ingress stream with a consumer group and turns entries into jobs."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        app: Celery,
        stream: str,
        group: str,
        consumer: str,
        claim_idle_seconds: float,
        events: EventPublisher,
        check_redis: Callable[[], None] | None = None,
    ) -> None:
        self._app = app
        # Run once before the first read; its Redis errors are retried like a read's.
        self._check_redis = check_redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self._claim_idle_ms = max(1, int(claim_idle_seconds * 1000))
        # Half the idle time: a dead consumer's entry resumes within 1.5 x INGRESS_CLAIM_IDLE.
        self._claim_every = max(0.05, claim_idle_seconds / 2)
        self._next_claim = 0.0
        self._events = events
        self._entries = IngressEntries(client, stream=stream, group=group, consumer=consumer)
        self._stopping = False
        # Our own pending entries are read again at start (a restart under the
        # same --consumer name) and after a failure left some behind.
        self._own_pending = True
        # Entries left pending after an unexpected error, for --once's exit code.
        self.left_pending = 0

    def stop(self) -> None:
        """Finish the entry in hand, then return from :meth:`run` (safe in a signal handler)."""
        self._stopping = True

    def run(self, *, block_ms: int, once: bool = False) -> int:
        """Handle entries until stopped; with ``once``, until none is left. Returns an exit code.

        A Redis or broker failure is logged and retried with backoff (with
        ``once`` it ends the run with 1 instead, as does an entry left pending
        after an unexpected error).
        """
        backoff = BACKOFF_FIRST
        ready = False
        while not self._stopping:
            try:
                if self._check_redis is not None:
                    self._check_redis()
                    self._check_redis = None
                if not ready:
                    self.ensure_group()
                    log.info(
                        "ingress ready: stream %s, group %s, consumer %s",
                        self.stream,
                        self.group,
                        self.consumer,
                    )
                    ready = True
                handled = self.round(block_ms=None if once else block_ms, claim_now=once)
            except TRANSIENT_ERRORS as error:
                if _no_group(error):
                    ready = False  # the group (or the stream) was deleted: create it again
                then = "entries stay pending" if once else f"retrying in {backoff:.1f}s"
                log.warning(
                    "ingress: Redis or the broker failed (%s: %s); %s",
                    type(error).__name__,
                    error,
                    then,
                )
                self._own_pending = True
                if once:
                    return 1
                self._sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
                continue
            backoff = BACKOFF_FIRST
            if once and handled == 0:
                break
        log.info("ingress stopped: consumer %s", self.consumer)
        return 1 if once and self.left_pending else 0

    def ensure_group(self) -> None:
        """Create the stream and the group if needed, from the stream's first entry."""
        self._entries.ensure_group()

    def round(self, *, block_ms: int | None, claim_now: bool = False) -> int:
        """One pass: entries to take over, our own left pending, then new ones. Returns how many
        were handled (acknowledged)."""
        handled = 0
        now = time.monotonic()
        if claim_now or now >= self._next_claim:
            self._next_claim = now + self._claim_every
            handled += self.reclaim()
        if self._own_pending and not self._stopping:
            handled += self._read_own_pending()
            self._own_pending = False
        if not self._stopping:
            # One at a time: on SIGTERM nothing read is left waiting for a takeover.
            entries = self._entries.read_new(block_ms=block_ms)
            # What was read is in hand: it is finished even if SIGTERM came during the read.
            handled += self._handle_all(entries, in_hand=True)
        return handled

    def reclaim(self) -> int:
        """Take over entries pending longer than INGRESS_CLAIM_IDLE (a dead consumer's)."""
        handled, cursor = 0, "0-0"
        while not self._stopping:
            cursor, entries = self._entries.take_over(
                idle_ms=self._claim_idle_ms, cursor=cursor, count=RECOVERY_BATCH
            )
            if entries:
                log.warning("ingress took over %d pending entries", len(entries))
            handled += self._handle_all(entries)
            if cursor == "0-0":
                break
        self._entries.forget_gone_consumers()
        return handled

    def _read_own_pending(self) -> int:
        handled, start = 0, "0"
        while not self._stopping:
            entries = self._entries.read_own_pending(after=start, count=RECOVERY_BATCH)
            if not entries:
                break
            handled += self._handle_all(entries)
            start = entries[-1][0]
        return handled

    def _handle_all(self, entries: Sequence[Entry], *, in_hand: bool = False) -> int:
        handled = 0
        for entry_id, fields in entries:
            if self._stopping and not in_hand:
                break
            if self.handle(entry_id, fields):
                handled += 1
        return handled

    def handle(self, entry_id: str, fields: Mapping[bytes | str, bytes | str] | None) -> bool:
        """Turn one entry into a job, or a dead letter; acknowledge and delete it.

        Returns False when the entry stays pending after an unexpected error:
        it is tried again when it is taken over, never in a loop here. Redis
        and broker failures propagate, with the entry pending.
        """
        task_id = task_id_for(self.stream, entry_id)
        if not fields:
            # Deleted after a takeover by an instance that had only been slow: done.
            self._entries.acknowledge(entry_id)
            return True
        raw_kind, raw = _field(fields, "type"), _field(fields, "data")
        kind = raw_kind.decode("utf-8", "replace") if raw_kind is not None else None
        data: object = None
        try:
            data = _decoded(raw)
            self._enqueue(kind, data, task_id)
        except (Malformed, InvalidPayload) as error:
            # The event's reason: invalid_payload, or payload_unreadable for a seal no key opens.
            problem = error if isinstance(error, InvalidPayload) else InvalidPayload(error.errors)
            self._dead_letter(
                entry_id=entry_id,
                task_id=task_id,
                kind=kind,
                raw=raw,
                data=data,
                reason=error.reason,
                problem=problem,
            )
            return True
        except TRANSIENT_ERRORS:
            raise
        except Exception:
            # Task ids, not entry ids: the log filter masks a 13-digit entry id as a number.
            log.exception("ingress: the entry of task %s failed; it stays pending", task_id)
            self.left_pending += 1
            return False
        self._entries.done(entry_id)
        log.info("ingress: %s enqueued as task %s", kind, task_id)
        return True

    def _enqueue(self, kind: str | None, data: object, task_id: str) -> None:
        """The helper's checks and enqueueing, with the entry's own task id."""
        if kind == PAYMENT_CONFIRMED:
            enqueue_issue(_object(data), app=self._app, task_id=task_id)
        elif kind == PAYMENT_CANCELLED:
            enqueue_cancel(_object(data), app=self._app, task_id=task_id)
        else:
            raise Malformed(
                "unknown_type", {"type": [f"Must be {PAYMENT_CONFIRMED} or {PAYMENT_CANCELLED}."]}
            )

    def _dead_letter(
        self,
        *,
        entry_id: str,
        task_id: str,
        kind: str | None,
        raw: bytes | None,
        data: object,
        reason: str,
        problem: InvalidPayload,
    ) -> None:
        """The failure event (when an imp_uid can be read), then the dead letter, ack and delete.

        The event is once per task id, and the dead letter goes in the same
        transaction as the acknowledgement: handled again after a crash, the
        entry adds neither a second event nor a second dead letter.
        """
        readable = _readable_part(data, raw)
        job = readable_job(readable)
        if job is not None:
            self._events.publish_terminal(
                event_type=CANCEL_FAILED if kind == PAYMENT_CANCELLED else FAILED,
                task_id=task_id,
                job=job,
                merchant_uid=readable_merchant_uid(readable),
                attempts=1,
                duplicate=False,
                detail=invalid_detail(problem),
            )
        self._entries.set_aside(
            entry_id,
            task_id=task_id,
            kind=kind,
            imp_uid=job.imp_uid if job is not None else None,
            reason=reason,
            errors=problem.errors,
            raw=raw,
            data=data,
        )
        log.error(
            "ingress: the entry of task %s is malformed (%s: %s); it is in %s",
            task_id,
            reason,
            ", ".join(sorted(problem.errors)),
            DEAD_ENTRIES_KEY,
        )

    def _sleep(self, seconds: float) -> None:
        """Sleep in short steps, so that SIGTERM is honoured at once."""
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _field(fields: Mapping[bytes | str, bytes | str], name: str) -> bytes | None:
    value = fields.get(name.encode(), fields.get(name))
    return value.encode() if isinstance(value, str) else value


def _decoded(raw: bytes | None) -> object:
    """The entry's ``data``, parsed; not UTF-8 or not JSON is :class:`Malformed`."""
    if raw is None:
        raise Malformed("invalid_json", {"data": ["Missing: a JSON object is required."]})
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise Malformed("invalid_json", {"data": ["Not UTF-8 text."]}) from None
    except ValueError as error:
        message = error.msg if isinstance(error, json.JSONDecodeError) else "unreadable"
        raise Malformed("invalid_json", {"data": [f"Not valid JSON ({message})."]}) from None
    except RecursionError:
        # Valid JSON, perhaps, but nested deeper than any parser here can follow.
        raise Malformed("invalid_json", {"data": ["Not valid JSON (nested too deeply)."]}) from None


def _readable_part(data: object, raw: bytes | None) -> object:
    """What the failure event can name: the decoded ``data``; or, when it could not be
    decoded (not UTF-8, cut off, nested too deeply), the strings at its top level."""
    if data is not None or raw is None:
        return data
    return top_level_strings(raw.decode("utf-8", "surrogateescape"))


def _object(data: object) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise InvalidPayload({"_payload": ["Must be a JSON object."]})
    return data


def _no_group(error: BaseException) -> bool:
    return isinstance(error, redis.ResponseError) and "NOGROUP" in str(error)


def default_consumer() -> str:
    """``hostname-pid``: unique per process, so that no two instances share pending entries."""
    return f"{socket.gethostname()}-{os.getpid()}"


#: ``--block-ms`` when not given: SIGTERM is noticed within one read's wait.
DEFAULT_BLOCK_MS = 2000


def serve(
    *, consumer: str | None = None, once: bool = False, block_ms: int = DEFAULT_BLOCK_MS
) -> int:
    """Run one ingress instance (``cashreceipt ingress``) until SIGTERM, or, with ``once``,
    until the stream is handled. Exit codes: 0 stopped or done, 1 entries left pending
    (``once``), 2 configuration error."""
    celeryconfig = load_celeryconfig()
    _setup_logging(celeryconfig)
    try:
        Sealer.from_conf(app.conf)
    except SealingUnavailable as error:
        print(f"cashreceipt: configuration error: {error}", file=sys.stderr)
        return 2
    consumer = consumer or default_consumer()
    client = redis_client(
        celeryconfig.ledger_backend_url,
        # Named, so that operators (and tests) can tell ingress connections apart.
        name=INGRESS_CLIENT_PREFIX
        + "".join(c if c.isprintable() and not c.isspace() else "_" for c in consumer),
        health_check_interval=30,
        # redis-py's default of 5 s would cut a longer blocking read short.
        socket_timeout=block_ms / 1000 + 10,
        socket_connect_timeout=10,
    )
    ingress = Ingress(
        client,
        app=app,
        stream=celeryconfig.ingress_stream,
        group=celeryconfig.ingress_group,
        consumer=consumer,
        claim_idle_seconds=float(celeryconfig.ingress_claim_idle),
        events=EventPublisher(
            client,
            stream=celeryconfig.result_stream,
            retention_seconds=int(celeryconfig.result_stream_retention),
        ),
        check_redis=lambda: _check_durability(client, celeryconfig),
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("ingress got %s: finishing the entry in hand", signal.Signals(signum).name)
        ingress.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return ingress.run(block_ms=block_ms, once=once)


def _check_durability(client: redis.Redis, celeryconfig: ModuleType) -> None:
    """Refuse to start (exit 2, one line) on a Redis that may lose what it acknowledged."""
    try:
        warnings = check_durability(
            client,
            policy=str(celeryconfig.redis_durability),
            shown_url=redact_url(str(celeryconfig.ledger_backend_url)),
        )
    except NotDurable as refusal:
        raise SystemExit(str(refusal)) from None
    for warning in warnings:
        log.warning("%s", warning)


def _setup_logging(celeryconfig: ModuleType) -> None:
    """Log to stderr through the same mask as the workers (no identifier, no secret), as text
    or as JSON lines (LOG_FORMAT)."""
    setup_process_logging(
        celeryconfig, level=logging.INFO, text="[%(asctime)s: %(levelname)s/ingress] %(message)s"
    )


#: What ``python -m worker.ingress`` says: the ingress starts from the console script.
NOT_AN_ENTRY_POINT = (
    "python -m worker.ingress does not start the ingress: run `cashreceipt ingress` "
    "(`cashreceipt ingress --help` lists its options)"
)

if __name__ == "__main__":
    # It once ran the ingress (d88b25b); since the options moved to click in
    # worker/cli/ingress.py, which imports this module, forwarding there would be an
    # import cycle. A usage error (2) with the documented command, not a silent 0.
    print(NOT_AN_ENTRY_POINT, file=sys.stderr)
    sys.exit(2)
