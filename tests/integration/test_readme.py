"""The README's examples work as written."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def readme_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker} -->\n```python\n(.*?)```", text, re.DOTALL)
    assert found, f"README has no {marker} block"
    return found.group(1)


@pytest.mark.usefixtures("worker")
def test_consumer_example_reads_events_with_a_group(
    producer: Celery,
    redis_server: RedisServer,
    results: ResultStream,
    imp_uid: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README consumer creates its group, sees the events and acks them."""
    task_id = str(
        producer.send_task(
            "issue_cash_receipt",
            args=[{"imp_uid": imp_uid, "identifier": "01055554321"}],
            queue="cash_receipts",
        ).id
    )
    results.wait(task_id)
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    namespace: dict[str, Any] = {"__name__": "readme_consumer"}
    exec(readme_block("consumer-example"), namespace)  # noqa: S102 (our own README)
    namespace["consume_once"](block_ms=100)
    assert f"receipt {imp_uid}" in capsys.readouterr().out
    pending = redis_server.client().xpending("cash_receipt.events", "checkout")
    assert pending["pending"] == 0


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of its own: the session's worker must not take the demo's messages."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def test_make_run_shows_receipts_and_one_failure(own_redis: RedisServer) -> None:
    """The README's run command, non-interactive: three receipts issued, one refusal explained."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.demo", "--once", "--flower-port", "0", "--timeout", "60"],
        cwd=ROOT,
        env={
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "REDIS_URL": own_redis.url,
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" ISSUED ") == 3
    assert "FAILED  rejected after 3 attempts: HTTP 500" in result.stdout
    assert "TS1" in result.stdout
