"""The README's examples work as written."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.demo import stop_demo
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.core.urls import redact_url

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
    seen: list[str] = []

    def consumed_ours() -> bool:
        # Each call reads at most 100 new events, and the session's stream holds other tests'.
        namespace["consume_once"](block_ms=100)
        seen.append(capsys.readouterr().out)
        return f"receipt {imp_uid}" in "".join(seen)

    wait_for(consumed_ours, timeout=30, message="the README consumer to see our receipt")
    pending = redis_server.client().xpending("cash_receipt.events", "checkout")
    assert pending["pending"] == 0


def test_make_run_shows_receipts_and_one_failure(own_redis: RedisServer) -> None:
    """The README's run command, non-interactive: four receipts issued (one at a counter),
    one refusal explained."""
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
    # own_redis runs without appendonly, and the demo did not start it: its worker would
    # refuse it, so the demo accepts the risk for it, and says so and what that means.
    shown = redact_url(own_redis.url)  # it logs in as the ACL user, password masked
    assert f"Redis             {shown}  (yours, already running)" in result.stdout
    assert (
        "REDIS_DURABILITY=accept-risk set for the worker (a Redis the demo did not start): "
        "appendonly is no"
    ) in result.stdout
    assert "may lose queued payments and ledger records: fine for a demo only." in result.stdout
    assert result.stdout.count(" ISSUED ") == 5
    # The sale in cash at a counter: an external receipt, named by its receipt key.
    assert re.search(r"iamport-external:counter-\S+ +ISSUED  amount 22000", result.stdout)
    assert re.search(r"portone:cash-\S+ +ISSUED  amount 16500", result.stdout)
    assert "FAILED  rejected after 3 attempts: HTTP 500" in result.stdout
    assert "TS1" in result.stdout


def _children_of(pid: int) -> set[int]:
    """The pids whose parent is ``pid``, read from /proc."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended while we looked
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_make_run_stops_its_children_on_a_signal(own_redis: RedisServer, signum: int) -> None:
    """A demo stopped by kill or a closed terminal takes its worker, Flower and sandbox with it."""
    demo = subprocess.Popen(
        [sys.executable, "-m", "worker.demo", "--flower-port", "0", "--timeout", "60"],
        cwd=ROOT,
        env={
            "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
            "REDIS_URL": own_redis.url,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output = ProcessOutput(demo)
        wait_for(lambda: "keep running" in output.text, timeout=90, message="the demo's results")
        children = _children_of(demo.pid)
        assert len(children) == 3, output.text  # sandbox, worker, Flower
        # The session's Redis is the user's own: named as such, and not said to be stopped.
        assert "(yours, already running)" in output.text, output.text
        assert "Worker, Flower and sandbox keep running" in output.text, output.text
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == 128 + signum
        wait_for(
            lambda: not any(_alive(pid) for pid in children),
            timeout=30,
            message="the demo's children to exit",
        )
    finally:
        stop_demo(demo)


def readme_payloads(kind: str) -> list[dict[str, Any]]:
    """The JSON payloads the README marks ``<!-- payload: kind -->``, as written."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(rf"<!-- payload: {kind} -->\n```json\n(.*?)```", text, re.DOTALL)
    return [json.loads(block) for block in blocks]


@pytest.mark.usefixtures("worker")
def test_the_readmes_payloads_issue_and_refund_as_written(
    producer: Celery, results: ResultStream
) -> None:
    """Each issue payload the README shows issues through a real worker, and each
    refund payload then refunds it (under a merchant_uid of this test's own)."""
    issues, refunds = readme_payloads("issue"), readme_payloads("cancel")
    assert issues and refunds
    suffix = uuid.uuid4().hex[:8]
    for payload in issues:
        payload["merchant_uid"] = f"{payload['merchant_uid']}-{suffix}"
        event = results.wait(enqueue_issue(payload, app=producer))
        assert event["type"] == "cash_receipt.issued", event
    for payload in refunds:
        payload["merchant_uid"] = f"{payload['merchant_uid']}-{suffix}"
        task_id = enqueue_cancel(payload, app=producer)
        # The sandbox refuses a re-issue under the merchant_uid: cancelled, then id_taken.
        wait_for(
            lambda task_id=task_id: len(results.for_task(task_id)) == 2,
            message="the refund's events",
        )
        first = min(results.for_task(task_id), key=lambda event: event["id"])
        assert first["type"] == "cash_receipt.cancelled"
        assert first["data"]["receipt"]["imp_uid"] is None
