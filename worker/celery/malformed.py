"""Messages for our task that Celery itself would choke on.

Celery 5.7 unpacks a protocol-2 body as ``args, kwargs, embed`` inside the
consumer's event loop, outside any task. A body that is valid JSON but not that
triple (a bare payload object, a string, ``[]``) raises there and stops the
whole worker; on restart the unacked message comes back and stops it again. A
body that is not JSON is logged at CRITICAL *with the body*, which may hold an
identifier, and dropped.

So the task's strategy is wrapped: every message of our tasks is checked
first. A malformed one ends like any bad payload of its task: one
``cash_receipt.failed`` event (``cash_receipt.cancel_failed`` for a
``cancel_cash_receipt`` message, as the ingress ends a malformed cancellation)
with reason ``invalid_payload`` (and its imp_uid when one can be read), a log
line without the body, and an ack.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import Task
from celery.exceptions import InvalidTaskError
from kombu.exceptions import DecodeError

from worker.celery.runtime import get_runtime
from worker.core.contract import CANCEL_TASK
from worker.core.masking import encodable
from worker.core.schemas import InvalidPayload, readable_job, readable_merchant_uid
from worker.core.terminal import TerminalPublisher

log = logging.getLogger(__name__)

Strategy = Callable[..., Any]


def body_problem(payload: object) -> str | None:
    """Why a decoded body is not a Celery protocol-2 ``[args, kwargs, embed]``, or None."""
    if isinstance(payload, Mapping):
        # Protocol 1 and Celery's "hybrid" messages keep args in a mapping.
        args, kwargs = payload.get("args"), payload.get("kwargs", {})
        if isinstance(args, list | tuple) and isinstance(kwargs, Mapping):
            return None
        return "The message body is a JSON object, not Celery's [args, kwargs, embed]."
    if not isinstance(payload, list | tuple) or len(payload) != 3:
        return "The message body is not Celery's [args, kwargs, embed] triple."
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple) or not isinstance(kwargs, Mapping):
        return "The message body's args must be a list and its kwargs an object."
    if embed is not None and not isinstance(embed, Mapping):
        return "The message body's embed part must be an object."
    return None


_IMP_UID_IN_TEXT = re.compile(rb'"imp_uid"\s*:\s*"([A-Za-z0-9_\-.]{1,100})"')


def header_problem(headers: Mapping[str, Any]) -> str | None:
    """Why the headers cannot carry a task run, or None."""
    if not isinstance(headers.get("id"), str):
        return "The message has no task id."
    if not encodable(headers["id"]):
        # A lone surrogate ("\ud800" in JSON): no key or event could hold the id.
        return "The message's task id is not Unicode text."
    # Absent is 0; null is not: Celery reads it as None, our run's int() raised and the
    # message ended without an event, and Celery's own retry adds 1 to it.
    retries = headers.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        return "The message's retries header is not a count."
    for name in ("eta", "expires"):
        # Celery parses a string (or a number, for expires) and turns a bad one into
        # InvalidTaskError; a falsy list or object slips past its parser and
        # raises AttributeError inside the request instead.
        value = headers.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, str | int | float)
        ):
            return f"The message's {name} header is not a date."
    if not _is_timelimit(headers.get("timelimit")):
        # Celery unpacks it into (soft, hard) and takes numbers; anything else raised
        # inside the request, and the readable message was parked with no event.
        return "The message's timelimit header is not [soft, hard] seconds."
    return None


def _is_timelimit(value: object) -> bool:
    if value is None:
        return True
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(
            item is None or (isinstance(item, int | float) and not isinstance(item, bool))
            for item in value
        )
    )


def readable_payload(payload: object, raw_body: bytes = b"") -> object:
    """The object most likely meant as the payload, to read an imp_uid from.

    For a body that is not even JSON, an ``"imp_uid": "..."`` pair found in
    its bytes still names the payment.
    """
    if isinstance(payload, list | tuple) and payload and isinstance(payload[0], list | tuple):
        return payload[0][0] if payload[0] else None
    if payload is None and raw_body:
        found = _IMP_UID_IN_TEXT.search(raw_body)
        return {"imp_uid": found.group(1).decode()} if found else None
    return payload


def guard(strategy: Strategy, task: Task) -> Strategy:
    """Wrap ``strategy`` so that malformed messages end in a failure event, not a crash."""

    def guarded(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> Any:
        headers = message.headers if isinstance(message.headers, Mapping) else {}
        problem: str | None
        try:
            payload = message.decode() if body is None else body
        except DecodeError:
            problem, payload = "The message body is not valid JSON.", None
        except Exception as error:  # noqa: BLE001 (bad content type or encoding: kombu's own errors)
            problem, payload = f"The message body cannot be decoded ({type(error).__name__}).", None
        else:
            problem = body_problem(payload) or header_problem(headers)
        if problem is None:
            try:
                return strategy(message, body, ack, reject, callbacks, **kwargs)
            except InvalidTaskError as error:
                # Celery refuses the message itself (an ETA that is not a date...).
                problem = f"Celery refuses the message ({type(error).__name__})."
        _fail_malformed(task, message, headers, payload, problem)
        return None

    return guarded


def message_terminal(task: Task, task_id: str, retries: object, raw: object) -> TerminalPublisher:
    """The terminal publisher of a message that no run of ``task`` will end."""
    runtime = get_runtime(task.app.conf)
    return TerminalPublisher(
        events=runtime.events,
        store=runtime.ledger,
        task_id=task_id,
        attempts=(retries if isinstance(retries, int) else 0) + 1,
        job=readable_job(raw),
        merchant_uid=readable_merchant_uid(raw),
    )


def _fail_malformed(
    task: Task, message: Any, headers: Mapping[str, Any], payload: object, problem: str
) -> None:
    body = message.body if isinstance(message.body, bytes) else str(message.body or "").encode()
    raw = readable_payload(payload, body)
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not encodable(task_id):
        # No id to key the event on: derive one from the body so a redelivery
        # of the same bytes still publishes once.
        # The delivery tag tells two such messages apart; a redelivery keeps it.
        tag = str(getattr(message, "delivery_tag", "")).encode()
        task_id = "malformed-" + hashlib.sha256(tag + b"\0" + body).hexdigest()[:32]
    terminal = message_terminal(task, task_id, headers.get("retries"), raw)
    error = InvalidPayload({"_message": [problem]})
    try:
        if task.name == CANCEL_TASK:
            terminal.cancel_invalid(error)
        else:
            terminal.invalid_payload(error)
    except redis.RedisError:
        log.exception("could not publish the failure of malformed message %s; requeued", task_id)
        message.reject(requeue=True)
        return
    log.error(
        "discarded malformed %s message %s (imp_uid %s): %s",
        task.name,
        task_id,
        terminal.imp_uid,
        problem,
    )
    message.ack()
