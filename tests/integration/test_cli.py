"""The `cashreceipt` console script, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.worker import worker_env

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")


def run(
    redis_server: RedisServer, sandbox: Sandbox, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``cashreceipt`` with the test worker's settings."""
    return subprocess.run(
        [CLI, args[0], "--json", *args[1:]],
        env=worker_env(redis_server.url, sandbox.url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.usefixtures("worker")
def test_enqueue_from_json_then_status(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """`enqueue` prints the task id; `status` prints the payment's latest event."""
    enqueued = run(
        redis_server,
        sandbox,
        "enqueue",
        json.dumps({"imp_uid": imp_uid, "identifier": "010-5555-4321"}),
    )
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = json.loads(enqueued.stdout)["task_id"]
    results.wait(task_id)
    status = run(redis_server, sandbox, "status", imp_uid)
    assert status.returncode == 0
    shown = json.loads(status.stdout)
    assert (shown["event"]["type"], shown["event"]["data"]["task_id"]) == (
        "cash_receipt.issued",
        task_id,
    )
    assert (shown["ledger"]["state"], shown["ledger"]["task_id"]) == ("issued", task_id)
    assert shown["ledger"]["payload"]["identifier_sealed"] == "<sealed>"
    assert "5555" not in status.stdout


@pytest.mark.usefixtures("worker")
def test_enqueue_from_flags_and_stdin(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """Flags build a payload; `--file -` reads one from standard input."""
    by_flags = run(
        redis_server, sandbox, "enqueue", "--imp-uid", imp_uid, "--identifier", "01055554321",
        "--identifier-type", "phone", "--tax-free", "0",
    )  # fmt: skip
    assert results.wait(json.loads(by_flags.stdout)["task_id"])["type"] == "cash_receipt.issued"
    payload = json.dumps({"imp_uid": f"{imp_uid}_2", "identifier": "01055554321"})
    by_stdin = run(redis_server, sandbox, "enqueue", "--file", "-", stdin=payload)
    assert results.wait(json.loads(by_stdin.stdout)["task_id"])["type"] == "cash_receipt.issued"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["enqueue", '{"imp_uid": "x", "identifier": "010-5555"}'], "identifier"),
        (["enqueue", "not json"], "_payload"),
        (["enqueue", "[1]"], "_payload"),
        (["enqueue", "--identifier", "01055554321"], "imp_uid"),
    ],
)
def test_bad_input_exits_2_with_field_errors(
    redis_server: RedisServer, sandbox: Sandbox, args: list[str], field: str
) -> None:
    """Bad input is refused before anything is enqueued, naming the field, not echoing it."""
    result = run(redis_server, sandbox, *args)
    assert result.returncode == 2
    assert field in json.loads(result.stderr)["fields"]
    assert "5555" not in result.stderr


def test_status_of_an_unknown_payment(redis_server: RedisServer, sandbox: Sandbox) -> None:
    """No event for the payment: exit 1 and say so."""
    result = run(redis_server, sandbox, "status", "imp_never_seen")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "unknown"
