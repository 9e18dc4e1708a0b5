"""The worker's Celery consumer: unknown, invalid and undecodable messages are dead letters.

Celery's defaults log the message body (which may hold an identifier) and
drop the message. During a rolling deploy a newer producer's task would then be
lost on an older worker. These overrides keep it as a dead message instead (see
:mod:`worker.adapters.store.dead_messages`) and log one masked line.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis
from celery.worker.consumer import Consumer as CeleryConsumer

from worker.adapters.store.dead_messages import (
    dead_message_record,
    keep_dead_message,
    portable_envelope,
)
from worker.celery.runtime import get_runtime

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer: what it cannot run is kept as a dead message, not logged and dropped."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        """Celery's handler, behind a guard: one bad message is a dead letter, never fatal.

        Celery looks the task name up in a dict before anything else; a name that
        is a list or an object raises there and stops the worker, and the message,
        restored on restart, stops it again.
        """
        handler = super().create_task_handler(*args, **kwargs)
        connection_errors = tuple(self.connection_errors)

        def on_task_received(message: Any) -> Any:
            headers = message.headers
            if isinstance(headers, dict) and not isinstance(headers.get("task", ""), str):
                self._dead_letter(message, "the task name is not a string")
                return None
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as error:
                log.exception("a message could not be handled; parking it")
                self._dead_letter(message, f"unhandled message: {type(error).__name__}")
                return None

        return on_task_received

    def on_unknown_message(self, body: Any, message: Any) -> None:
        """Not a Celery task message at all."""
        self._dead_letter(message, "not a Celery task message")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        """A task this worker does not know (an older or newer deploy's, or a typo)."""
        name = (message.headers or {}).get("task")
        self._dead_letter(message, f"unknown task {name!r}")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        """A task message Celery refuses (bad ETA, disallowed content type...)."""
        self._dead_letter(message, f"invalid task message: {type(exc).__name__}")

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        """A body that cannot be decoded with its declared content type."""
        self._dead_letter(message, f"undecodable body: {type(exc).__name__}")

    def _dead_letter(self, message: Any, reason: str) -> None:
        envelope = portable_envelope(message)
        runtime = get_runtime(self.app.conf)
        record = dead_message_record(
            reason=reason,
            queue=queue_of(message),
            envelope=envelope if isinstance(envelope, dict) else None,
            raw=None if isinstance(envelope, dict) else message.body,
            sealer=runtime.sealer,
        )
        try:
            keep_dead_message(runtime.redis, record)
        except redis.RedisError:
            # Not kept, so not acked either: it comes back after the visibility timeout.
            message.reject_log_error(log, self.connection_errors, requeue=True)
            return
        message.ack()


def queue_of(message: Any) -> str | None:
    """The queue a message was meant for, from its routing key.

    A countdown on a RabbitMQ quorum queue travels through Celery's delay
    exchanges, whose routing key carries the delay as a dotted binary prefix;
    that prefix is dropped, so a retry kept as a dead message is requeued to its own queue.
    """
    key = (message.delivery_info or {}).get("routing_key")
    if not isinstance(key, str):
        return None
    return _DELAY_PREFIX.sub("", key, count=1)


_DELAY_PREFIX = re.compile(r"^(?:[01]\.){28}")
