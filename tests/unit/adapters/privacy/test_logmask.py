"""The log filter: identifiers and secrets never reach a log line."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from worker.adapters.privacy.logmask import MaskPersonalData, install, remember_secret

SECRET = "s3cr3t-value-of-iamport"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose one handler carries the filter, writing to a buffer."""
    stream = io.StringIO()
    logger = logging.getLogger(f"test.logmask.{id(stream)}")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    install(MaskPersonalData([SECRET, "short"]), [logger])
    yield logger, stream
    logger.removeHandler(handler)


def test_arguments_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """An identifier passed as a %-argument is masked in the output, at DEBUG too."""
    logger, stream = captured
    logger.debug("body: %r", b'{"identifier": "010-1234-5678"}')
    assert "010****5678" in stream.getvalue()
    assert "1234" not in stream.getvalue()


def test_tracebacks_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """An exception text that quotes an identifier is masked in the traceback."""
    logger, stream = captured
    error = ValueError("bad identifier 9710139019902")
    logger.error("failed", exc_info=(ValueError, error, None))
    assert "9710139019902" not in stream.getvalue()
    assert "971******9902" in stream.getvalue()


def test_secrets_are_replaced(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """The literal secret becomes <secret>; too-short values are not treated as secrets."""
    logger, stream = captured
    logger.info("key=%s other=short", SECRET)
    assert SECRET not in stream.getvalue()
    assert "<secret>" in stream.getvalue()
    assert "other=short" in stream.getvalue()


def test_ordinary_lines_are_unchanged(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Task ids, dates and short numbers pass through as they were."""
    logger, stream = captured
    line = "Task issue_cash_receipt[758db68f-5558-4b35] retry in 12s at 2026-11-24 18:38:06"
    logger.info(line)
    assert stream.getvalue().strip() == line


def test_extra_fields_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """Fields given with extra= (Celery's `data` holds a task's arguments) are masked too."""
    logger, _ = captured
    seen: list[logging.LogRecord] = []
    # After the mask, on the same handler: what any formatter would get.
    logger.handlers[0].addFilter(lambda record: seen.append(record) or True)
    logger.info(
        "x",
        extra={
            "data": {"args": "[{'identifier': '010-1234-5678'}]", "runtime": 0.1},
            "reason": f"key {SECRET}",
            "attempt": 2,
            "numbers": [9710139019902, True],
        },
    )
    [record] = seen
    assert record.data == {"args": "[{'identifier': '010****5678'}]", "runtime": 0.1}
    assert record.reason == "key <secret>"
    assert record.attempt == 2
    assert record.numbers == ["971******9902", True]


def test_access_tokens_are_masked(captured: tuple[logging.Logger, io.StringIO]) -> None:
    """A token the client used is masked by value; any token in its usual shapes too."""
    logger, stream = captured
    remember_secret("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0")
    logger.info("token a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0 cached")
    logger.info("headers {'Authorization': 'Bearer never-seen-token-xyz'}")
    logger.info('answer {"access_token": "another.unseen_token", "now": 1}')
    text = stream.getvalue()
    for token in ("a1b2c3d4e5f6", "never-seen-token-xyz", "another.unseen_token"):
        assert token not in text
    assert text.count("<secret>") == 3


def test_the_pools_debug_line_prints_no_request(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    """Celery's pool logs each task's whole request at DEBUG: the raw payload (a buyer's
    name, which no digit mask catches) and every header its producer wrote (review of
    issue 14, F2). The line stays; its arguments go."""
    logger, stream = captured
    request = {"buyer_name": "김민준", "group": "tel_010_9777_1234", "reason": "환불 요청"}
    logger.debug("TaskPool: Apply %s (args:%s kwargs:%s)", "<trace>", (request,), {})
    line = stream.getvalue()
    assert "TaskPool: Apply a task" in line
    assert all(text not in line for text in ("김민준", "9777", "환불"))
