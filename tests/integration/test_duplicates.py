"""Duplicates through a real worker: waiting messages end with the owner; copies never both act."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput
from worker.adapters.store.keys import ledger_key
from worker.adapters.store.ledger import FENCE_HEADER, Ledger
from worker.celery.producer import enqueue_issue
from worker.core.contract import ISSUE_TASK, QUEUE

pytestmark = pytest.mark.integration
PG_REFUSED = {"kind": "reject", "message": "PG: refused", "method": "POST"}
# Lookups slower than the duplicate's arrival, faster than IAMPORT_TIMEOUT (1 s).
SLOW_LOOKUP = {"kind": "latency", "ms": 600, "method": "GET"}


def posts(sandbox: Sandbox, imp_uid: str) -> list[int]:
    """The statuses of the POSTs the sandbox answered for a payment."""
    return [r["status"] for r in sandbox.admin.requests(imp_uid) if r["method"] == "POST"]


def in_flight(client: redis.Redis, imp_uid: str) -> bool:
    """Whether a worker holds the payment's job."""
    return client.hget(ledger_key(imp_uid), "state") in {"in_flight", b"in_flight"}


def test_a_waiting_duplicate_reports_the_owners_failure(
    worker: ProcessOutput,
    sandbox: Sandbox,
    producer: Celery,
    redis_server: RedisServer,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """The owner fails for good: the duplicate that waited reports it, no POST of its own.

    Then a new payload, sent after the failure, re-opens the job and issues it.
    """
    # Three refusals (ISSUANCE_FAILED_MAX_ATTEMPTS), each retry looking first, slowly.
    sandbox.admin.script(imp_uid, PG_REFUSED, *[SLOW_LOOKUP] * 4, PG_REFUSED, PG_REFUSED)
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}
    owner = enqueue_issue(payload, app=producer)
    client = redis_server.client()
    wait_for(lambda: posts(sandbox, imp_uid), timeout=20, message="the owner's first POST")
    assert in_flight(client, imp_uid)
    waiter = enqueue_issue(payload, app=producer)

    first, second = results.wait(owner, timeout=30), results.wait(waiter, timeout=30)
    assert (first["type"], first["data"]["duplicate"]) == ("cash_receipt.failed", False)
    assert (second["type"], second["data"]["duplicate"]) == ("cash_receipt.failed", True)
    assert second["data"]["error"] == first["data"]["error"]
    assert second["data"]["error"]["reason"] == "rejected"
    assert posts(sandbox, imp_uid) == [500, 500, 500]

    corrected = enqueue_issue(payload, app=producer)
    event = results.wait(corrected, timeout=30)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert posts(sandbox, imp_uid) == [500, 500, 500, 200]
    assert [e["data"]["task_id"] for e in results.for_imp_uid(imp_uid)] == [
        owner,
        waiter,
        corrected,
    ]


@pytest.mark.parametrize("via", ["helper_and_sweeper", "bare_send_task"])
def test_two_copies_of_one_task_make_one_post(
    via: str,
    worker: ProcessOutput,
    sandbox: Sandbox,
    producer: Celery,
    redis_server: RedisServer,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """Two messages with one task id at once (a re-send of a job still queued): one POST.

    ``helper_and_sweeper``: the helper's message and the copy the sweeper sends when
    the job is due while its message still waits in a backlog. ``bare_send_task``:
    the same message sent twice, as a producer retrying its publish would.
    """
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 700, "method": "POST"})
    task_id = str(uuid.uuid4())
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}
    if via == "helper_and_sweeper":
        enqueue_issue(payload, app=producer, task_id=task_id)
        sealed = redis_server.client().hget(ledger_key(imp_uid), "payload")
        assert sealed is not None
        producer.send_task(
            ISSUE_TASK,
            args=[json.loads(sealed)],
            task_id=task_id,
            queue=QUEUE,
            headers={FENCE_HEADER: 0},  # the fence the sweeper reads from a received job
        )
    else:
        for _ in range(2):
            producer.send_task(ISSUE_TASK, args=[payload], task_id=task_id, queue=QUEUE)

    event = results.wait(task_id, timeout=30)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    ended = wait_for(
        lambda: (
            [line for line in worker.lines if f"[{task_id}] succeeded" in line][1:]
            and [line for line in worker.lines if f"[{task_id}] succeeded" in line]
        ),
        timeout=30,
        message="both copies to end",
    )
    assert sorted(line.rsplit(": ", 1)[-1].strip() for line in ended) == ["'done'", "'issued'"]
    assert posts(sandbox, imp_uid) == [200]
    assert len(results.for_task(task_id)) == 1


def test_a_fenced_out_message_hands_the_job_on_instead_of_attempting_again(
    worker: ProcessOutput,
    sandbox: Sandbox,
    producer: Celery,
    redis_server: RedisServer,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """One attempt per message (the time rule): a second claim goes to a retry with the fence.

    While the owner's POST is in flight, its job is taken over with its fence
    and handed back to the ledger (as a retry of the same task would). The
    owner is fenced out; its next claim succeeds, and it hands the job on to
    a new message of its task rather than making a second attempt itself.
    """
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 600, "method": "POST"})
    ledger = Ledger(
        redis_server.client(),
        stream="cash_receipt.events",
        event_retention_seconds=3600,
        retention_seconds=3600,
        lease_seconds=60,
    )
    task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
    wait_for(lambda: posts(sandbox, imp_uid) or None, timeout=20, message="the owner's POST")
    record = ledger.raw_record(imp_uid)
    assert record is not None
    taken = ledger.claim(imp_uid, task_id=task_id, payload={}, fence=int(record["fence"]))
    assert taken.kind == "claimed"
    assert ledger.park(imp_uid, fence=taken.fence, until=time.time() + 3600, error={"x": 1})

    event = results.wait(task_id, timeout=30)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    # Celery logs the retry after the run that raised it has published it, so the new
    # message's run may have ended first: the line is waited for, not assumed.
    wait_for(
        lambda: any(f"[{task_id}] retry" in line for line in worker.lines),
        message="the fenced-out message to hand the job on (its retry line)",
    )
    assert posts(sandbox, imp_uid) == [200]
