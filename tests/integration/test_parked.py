"""Messages the worker cannot run are parked where an operator sees them, never dropped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput, worker_env
from worker.parking import PARKED_KEY

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")


def parked_ids(redis_server: RedisServer) -> list[str]:
    """The task ids in the parked list."""
    return [json.loads(item).get("id") for item in redis_server.client().lrange(PARKED_KEY, 0, -1)]


def test_unknown_task_is_parked_and_can_be_requeued(
    worker: ProcessOutput,
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """A task from a newer deploy is parked with its reason, listed by the CLI, and requeued."""
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}
    unknown = str(
        producer.send_task("reissue_cash_receipt_v2", args=[payload], queue="cash_receipts").id
    )
    wait_for(lambda: unknown in parked_ids(redis_server), message="the unknown task to be parked")
    assert "01055554321" not in worker.text
    assert "01055554321" not in json.dumps(
        [json.loads(item) for item in redis_server.client().lrange(PARKED_KEY, 0, -1)]
    )

    env = worker_env(redis_server.url, sandbox.url)
    listing = subprocess.run(
        [CLI, "parked", "--json"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    shown = [json.loads(line) for line in listing.stdout.splitlines()]
    mine = next(record for record in shown if record["id"] == unknown)
    assert mine["reason"] == "unknown task 'reissue_cash_receipt_v2'"
    assert mine["task"] == "reissue_cash_receipt_v2"

    requeued = subprocess.run(
        [CLI, "parked", "--requeue", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(requeued.stdout)["requeued"] >= 1
    # This worker still does not know the task, so it comes straight back: parked again, not lost.
    wait_for(lambda: unknown in parked_ids(redis_server), message="the task to be parked again")
    sentinel = str(
        producer.send_task("issue_cash_receipt", args=[payload], queue="cash_receipts").id
    )
    assert results.wait(sentinel)["type"] == "cash_receipt.issued"
