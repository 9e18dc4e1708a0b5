"""Log lines as operators want them: readable text by default, JSON with ``LOG_FORMAT=json``.

A log shipper (Loki, CloudWatch, Elasticsearch) parses a JSON object per line
without a pattern per message, and can index the fields of a task's outcome
line (``task_id``, ``imp_uid``, ``outcome``...). The format changes, the
masking does not: every handler that gets a formatter here also carries
:class:`~worker.adapters.privacy.logmask.MaskPersonalData`, which runs before any formatter and
masks the message, the traceback and every ``extra`` field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from worker.adapters.privacy.logmask import MaskPersonalData, install
from worker.config.load import config_secrets
from worker.core.masking import mask_text, one_line

#: The ``extra`` fields a JSON line carries as keys of its own. Anything else a
#: library attaches is left out: Celery's ``data`` holds a task's arguments.
FIELDS = (
    "task",
    "task_id",
    "receipt_key",
    "provider",
    "kind",
    "imp_uid",
    "payment_id",
    "merchant_uid",
    "attempt",
    "outcome",
    "reason",
    "duplicate",
    "duration_ms",
    "provider_status",
    "provider_code",
)


def _no_context() -> Mapping[str, Any]:
    return {}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: time, level, logger, message, fields.

    ``context`` gives fields of the moment (the task being run), for lines
    that code deeper down logs without them; a record's own fields win.
    """

    def __init__(self, *, context: Callable[[], Mapping[str, Any]] = _no_context) -> None:
        super().__init__()
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON; newlines in messages and tracebacks are escaped, never printed."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "message": record.getMessage(),
        }
        # Added here, after the mask filter ran, so masked here.
        for name, value in self._context().items():
            if name in FIELDS and value is not None:
                line[name] = mask_text(str(value))
        for name in FIELDS:
            if name in record.__dict__:
                line[name] = record.__dict__[name]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, ensure_ascii=False, default=str)


def formatter_for(
    log_format: str, *, text: str, context: Callable[[], Mapping[str, Any]] = _no_context
) -> logging.Formatter:
    """The formatter of ``LOG_FORMAT``; ``text`` is the line format of the readable one."""
    if log_format == "json":
        return JsonFormatter(context=context)
    return logging.Formatter(text)


def use_json(
    handlers: Iterable[logging.Handler], *, context: Callable[[], Mapping[str, Any]]
) -> None:
    """Switch handlers that Celery set up to JSON lines (their mask filters stay)."""
    for handler in handlers:
        handler.setFormatter(JsonFormatter(context=context))


class _ProcessHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`setup_process_logging` installs, told apart from any other."""


def setup_process_logging(
    conf: Any, *, level: int, text: str, stream: IO[str] | None = None
) -> logging.Handler:
    """Log to stderr, masked, in LOG_FORMAT: for the processes Celery does not set up.

    ``conf`` is ``celeryconfig``, whose secrets the mask replaces. Called
    again (the CLI's commands can run in one process), it replaces the handler
    it installed before instead of adding a second one.
    """
    secrets = config_secrets(conf)
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _ProcessHandler):
            root.removeHandler(old)
    handler = _ProcessHandler(stream or sys.stderr)
    handler.setFormatter(formatter_for(conf.log_format, text=text))
    root.addHandler(handler)
    root.setLevel(level)
    install(MaskPersonalData(secrets), [root])
    return handler


def outcome_line(fields: Mapping[str, Any]) -> str:
    """The readable message of a task's outcome line; JSON lines carry ``fields`` besides.

    ``imp_x attempt 2: retry (provider_unavailable) after 130 ms, i'mport said 503``
    """
    job = one_line(str(fields.get("imp_uid") or fields.get("receipt_key") or "-"))
    line = f"{job} attempt {fields.get('attempt')}: {fields['outcome']}"
    if fields.get("reason"):
        line += f" ({fields['reason']})"
    line += f" after {float(fields.get('duration_ms') or 0):.0f} ms"
    status = fields.get("provider_status")
    if status is not None:
        line += f", i'mport said {status}"
        if fields.get("provider_code"):
            line += f" (code {fields['provider_code']})"
    return line


def say_as_json(message: str, stream: IO[str] | None = None) -> None:
    """Celery's ``safe_say`` (its shutdown notices), as a JSON line.

    Celery writes these from signal handlers with a bare ``os.write``, around
    logging and its locks; this does the same, with one JSON object instead of
    a line of text.
    """
    record = logging.makeLogRecord(
        {"name": "celery.apps.worker", "levelno": logging.WARNING, "levelname": "WARNING"}
    )
    record.msg = message.strip()
    target = stream or sys.__stderr__
    if target is None:
        return
    # As Celery's own: a notice is never worth failing a shutdown over.
    with contextlib.suppress(OSError):
        os.write(target.fileno(), (JsonFormatter().format(record) + "\n").encode())
