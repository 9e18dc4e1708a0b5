"""JSON log lines: one object per line, only the fields we chose, masked like every other line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from worker.adapters.observe.logs import FIELDS, JsonFormatter, outcome_line, setup_process_logging
from worker.adapters.privacy.logmask import MaskPersonalData, install

SECRET = "s3cr3t-value-of-iamport"
TASK_ID = "758db68f-5558-4b35-9a2d-123456789012"  # its last group is all digits


@pytest.fixture
def json_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler masks and writes JSON lines, as a worker's do."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        JsonFormatter(context=lambda: {"task_id": TASK_ID, "task": "issue_cash_receipt"})
    )
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    install(MaskPersonalData([SECRET]), [logger])
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """Every line parsed; fails on a line that is not one JSON object."""
    text = stream.getvalue()
    assert text.endswith("\n")
    parsed = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(item, dict) for item in parsed)
    return parsed


def test_a_record_is_one_line_of_json(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    """Time, level, logger, process and message; a newline in the message stays inside it."""
    logger, stream = json_log
    logger.warning("first line\nsecond line %s", "here")
    [line] = lines(stream)
    assert line["message"] == "first line\nsecond line here"
    assert line["level"] == "warning"
    assert line["logger"] == logger.name
    assert line["ts"].endswith("+00:00")
    assert isinstance(line["pid"], int)


def test_chosen_fields_are_kept_with_their_types(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """An outcome's fields become keys; numbers stay numbers, None stays null."""
    logger, stream = json_log
    fields = {
        "imp_uid": "imp_abc",
        "attempt": 2,
        "outcome": "retry",
        "reason": "provider_unavailable",
        "duplicate": False,
        "duration_ms": 12.5,
        "provider_status": 503,
        "provider_code": None,
    }
    logger.info("outcome", extra=fields)
    [line] = lines(stream)
    assert {key: line[key] for key in fields} == fields


def test_other_extras_are_left_out(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    """Celery's `data` holds a task's arguments: a JSON line never carries it."""
    logger, stream = json_log
    logger.info(
        "Task %(name)s succeeded",
        {"name": "issue_cash_receipt"},
        extra={"data": {"args": "[{'buyer_email': 'kim@example.com'}]"}, "colour": "red"},
    )
    [line] = lines(stream)
    assert "data" not in line
    assert "colour" not in line
    assert "kim@example.com" not in stream.getvalue()
    assert set(line) <= {"ts", "level", "logger", "process", "pid", "message", *FIELDS}


def test_fields_are_masked(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    """An identifier or a secret in a field, as text or as a number, never reaches the line."""
    logger, stream = json_log
    logger.info(
        "x", extra={"imp_uid": "imp 010-1234-5678", "reason": SECRET, "attempt": 1012345678}
    )
    [line] = lines(stream)
    assert line["imp_uid"] == "imp 010****5678"
    assert line["reason"] == "<secret>"
    assert line["attempt"] == "101***5678"
    assert "010-1234" not in stream.getvalue()


def test_messages_and_tracebacks_are_masked(json_log: tuple[logging.Logger, io.StringIO]) -> None:
    """The mask runs before the formatter: the message and the exception text are masked."""
    logger, stream = json_log
    error = ValueError("bad identifier 9710139019902")
    logger.error("failed for %s", "01012345678", exc_info=(ValueError, error, None))
    [line] = lines(stream)
    assert line["message"] == "failed for 010****5678"
    assert "971******9902" in line["exception"]
    assert "9710139019902" not in stream.getvalue()


def test_the_running_task_is_named_on_every_line(
    json_log: tuple[logging.Logger, io.StringIO],
) -> None:
    """Lines logged deep inside a task carry its id, whole; a record's own fields win."""
    logger, stream = json_log
    logger.info("deep inside")
    logger.info("own", extra={"task_id": "another-task"})
    first, second = lines(stream)
    assert first["task_id"] == TASK_ID
    assert first["task"] == "issue_cash_receipt"
    assert second["task_id"] == "another-task"


def test_process_logging_is_set_up_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI and the ingress log JSON to stderr; setting up twice leaves one handler."""
    conf = SimpleNamespace(
        iamport_secret=SECRET,
        pii_encryption_keys=[],
        broker_url="redis://:redis-password-1@localhost:6379/0",
        log_format="json",
    )
    root = logging.getLogger()
    before = list(root.handlers)
    monkeypatch.setattr(root, "level", root.level)
    stream = io.StringIO()
    try:
        setup_process_logging(conf, level=logging.INFO, text="%(message)s", stream=stream)
        handler = setup_process_logging(conf, level=logging.INFO, text="%(message)s", stream=stream)
        assert [h for h in root.handlers if h not in before] == [handler]
        logging.getLogger("test.logs.process").warning("password redis-password-1, %s", SECRET)
    finally:
        for added in [h for h in root.handlers if h not in before]:
            root.removeHandler(added)
    [line] = lines(stream)
    assert line["message"] == "password <secret>, <secret>"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"imp_uid": "imp_1", "attempt": 1, "outcome": "issued", "duration_ms": 41.6,
             "provider_status": 200, "provider_code": 0},
            "imp_1 attempt 1: issued after 42 ms, i'mport said 200",
        ),
        (
            {"imp_uid": "imp_1", "attempt": 3, "outcome": "failed", "reason": "rejected",
             "duration_ms": 5, "provider_status": 500, "provider_code": -1},
            "imp_1 attempt 3: failed (rejected) after 5 ms, i'mport said 500 (code -1)",
        ),
        (
            {"imp_uid": None, "attempt": 1, "outcome": "failed", "reason": "invalid_payload",
             "duration_ms": 0.4, "provider_status": None},
            "- attempt 1: failed (invalid_payload) after 0 ms",
        ),
    ],
)  # fmt: skip
def test_outcome_line_reads_as_a_sentence(fields: dict[str, Any], expected: str) -> None:
    """The readable line says what a JSON line's fields say."""
    assert outcome_line(fields) == expected
