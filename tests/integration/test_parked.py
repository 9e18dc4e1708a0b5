"""Messages the worker cannot run are parked where an operator sees them, never dropped."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import TEST_PII_KEY, ProcessOutput, worker_env
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.config.defaults import DEAD_MESSAGE_RETENTION_SECONDS

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")


def parked_ids(redis_server: RedisServer) -> list[str]:
    """The task ids in the parked list."""
    return [
        json.loads(item).get("id")
        for item in redis_server.client().lrange(DEAD_MESSAGES_KEY, 0, -1)
    ]


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
    client = redis_server.client()
    parked = [json.loads(item) for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1)]
    record = next(record for record in parked if record["id"] == unknown)
    # The body is base64: decode it, or the check below would pass whatever it held.
    (args, _kwargs, _embed) = json.loads(base64.b64decode(record["envelope"]["body"]))
    assert args[0]["imp_uid"] == imp_uid
    assert "identifier" not in args[0]
    assert Sealer([TEST_PII_KEY]).unseal(args[0]["identifier_sealed"]) == "01055554321"
    decoded = [base64.b64decode(r["envelope"]["body"]) for r in parked if r["envelope"]["body"]]
    assert all(b"5554321" not in body for body in decoded)
    assert "5554321" not in json.dumps(parked)
    assert 0 < client.ttl(DEAD_MESSAGES_KEY) <= DEAD_MESSAGE_RETENTION_SECONDS

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


def test_parked_messages_past_their_retention_are_dropped(
    worker: ProcessOutput, redis_server: RedisServer
) -> None:
    """The worker's sweeper drops parked records older than DEAD_MESSAGE_RETENTION_SECONDS."""
    client = redis_server.client()
    now_ms = int(time.time() * 1000)
    old = {
        "id": "parked-long-ago",
        "parked_at_ms": now_ms - DEAD_MESSAGE_RETENTION_SECONDS * 1000 - 1,
    }
    recent = {"id": "parked-lately", "parked_at_ms": now_ms - 60_000}
    client.rpush(DEAD_MESSAGES_KEY, json.dumps(recent), json.dumps(old))  # oldest at the tail
    wait_for(
        lambda: "parked-long-ago" not in parked_ids(redis_server),
        timeout=20,
        message="the sweeper to drop the expired record",
    )
    assert "parked-lately" in parked_ids(redis_server)
