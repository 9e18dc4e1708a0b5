"""A logging filter that masks identifiers and secrets in every line, at every level.

Our own code never logs a payload, but Celery and kombu do on paths we do not
own: the thread pool's DEBUG "Apply ... (args: ...)" line carries the message
body, and the unknown-task, invalid-task and decode-error paths dump it. So
every handler of the worker gets this filter: a run of ten or more digits
becomes ``010****5678``, and the literal values of secrets (the i'mport secret,
the Fernet keys, and every i'mport access token this process has used) become
``<secret>``, in the message, its arguments and any traceback, and in every
field a log call attached with ``extra=`` (the structured fields of JSON lines,
and Celery's ``data``, which holds a task's arguments). A token this process
never saw is still caught in its usual shapes (``Bearer …``,
``access_token: …``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from worker.core.masking import mask_text

#: The attributes every LogRecord has; anything else came from ``extra=``.
STANDARD_ATTRIBUTES = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime"}
)

#: Access tokens change at run time: the i'mport client registers each one it
#: uses (:func:`remember_secret`). Only the newest few can still be in use.
_REMEMBERED_LIMIT = 16
_remembered: list[str] = []
_remembered_lock = threading.Lock()
_TOKEN_SHAPES = re.compile(
    r"(?P<lead>\bBearer\s+|access_token\W{1,4})(?P<token>[A-Za-z0-9._~+/=-]{8,})",
    re.IGNORECASE,
)


def remember_secret(value: str) -> None:
    """Mask ``value`` in every log line from now on (an access token, once fetched)."""
    if not value or len(value) < 8:
        return
    with _remembered_lock:
        if value in _remembered:
            return
        _remembered.append(value)
        del _remembered[:-_REMEMBERED_LIMIT]


#: Celery's DEBUG line as each pool applies a task (celery/concurrency/base.py), and what
#: stands for its arguments here.
POOL_APPLY_LINE = "TaskPool: Apply %s (args:%s kwargs:%s)"
POOL_APPLY_SHOWN = "TaskPool: Apply a task (its arguments are not logged: they hold the payload)"


class MaskPersonalData(logging.Filter):
    """Rewrites a record so that no identifier or secret can be printed from it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Short values would mask unrelated text; real secrets are long.
        self._secrets = tuple(secret for secret in secrets if secret and len(secret) >= 8)

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if record.msg == POOL_APPLY_LINE:
            # Celery's pool prints a task's whole request at DEBUG: the raw payload (a
            # buyer's name in clear) and every header its producer wrote.
            record.msg, record.args = POOL_APPLY_SHOWN, ()
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = self._clean(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self._clean(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in STANDARD_ATTRIBUTES:
                setattr(record, name, self._clean_value(value))
        return True

    def _clean_value(self, value: Any) -> Any:
        """A copy of an ``extra`` value with every string, and every long number, masked."""
        if isinstance(value, str):
            return self._clean(value)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**9:
            # An identifier passed as a number would print as a run of digits.
            masked = self._clean(str(value))
            return value if masked == str(value) else masked
        if isinstance(value, dict):
            return {key: self._clean_value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean_value(item) for item in value]
        return value

    def _clean(self, text: str) -> str:
        for secret in (*self._secrets, *_remembered):
            text = text.replace(secret, "<secret>")
        text = _TOKEN_SHAPES.sub(lambda match: f"{match.group('lead')}<secret>", text)
        return mask_text(text)


def install(filter_: logging.Filter, loggers: Iterable[logging.Logger]) -> None:
    """Attach ``filter_`` to every handler of ``loggers`` (records propagate to handlers)."""
    for logger in loggers:
        for handler in logger.handlers:
            if filter_ not in handler.filters:
                handler.addFilter(filter_)
