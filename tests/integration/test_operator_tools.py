"""The operator's tools on a Redis with no worker: status, stuck, settle, and the sweeper's lock."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput, worker_env
from worker.adapters.store.keys import DUE_KEY, payment_receipt_key
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.sweeper import Sweeper
from worker.core.types import JobKey

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")
PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA-not-opened-here"}


def ledger_on(server: RedisServer, *, lease: float = 60) -> Ledger:
    """The ledger as the worker builds it."""
    return Ledger(
        server.client(),
        stream="cash_receipt.events",
        event_retention_seconds=3600,
        retention_seconds=3600,
        lease_seconds=lease,
    )


def claimed_and_abandoned(ledger: Ledger, imp_uid: str, task_id: str) -> None:
    """A job claimed by a worker that then died: in flight, its lease passed."""
    ledger.claim(imp_uid, task_id=task_id, payload={**PAYLOAD, "imp_uid": imp_uid})
    record = ledger.raw_record(imp_uid)
    assert record is not None
    lease_until = int(record["lease_until"]) / 1000
    wait_for(lambda: time.time() > lease_until, timeout=5, message="the lease to pass")


def cli(
    server: RedisServer, sandbox: Sandbox, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run ``cashreceipt`` against this Redis and the sandbox (``env``: more settings)."""
    return subprocess.run(
        [CLI, args[0], "--json", *args[1:]],
        env=worker_env(server.url, sandbox.url, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_stuck_lists_overdue_jobs(own_redis: RedisServer, sandbox: Sandbox) -> None:
    """A job due two minutes ago is stuck; one due in an hour is not."""
    ledger = ledger_on(own_redis)
    ledger.receive("imp_late", task_id="t-late", payload=PAYLOAD, resend_after=-120)
    ledger.receive("imp_fine", task_id="t-fine", payload=PAYLOAD, resend_after=3600)
    # An external receipt's job is listed too, by its receipt key (issue 15).
    external = JobKey.external("order-late")
    ledger.receive(external, task_id="t-order", payload=PAYLOAD, resend_after=-60 * 5)
    result = cli(own_redis, sandbox, "stuck", "--older-than", "60")
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["receipt_key"], r["state"], r["task_id"]) for r in listed] == [
        ("iamport-external:order-late", "received", "t-order"),
        ("iamport:imp_late", "received", "t-late"),
    ]
    assert listed[0]["payload"]["identifier_sealed"] == "<sealed>"


def test_settle_adopts_a_receipt_that_exists(
    own_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """A job stuck in flight whose receipt exists at i'mport ends issued, with its event."""
    ledger = ledger_on(own_redis, lease=0.2)
    task_id = str(uuid.uuid4())
    claimed_and_abandoned(ledger, imp_uid, task_id)
    token = sandbox.get_token()
    created = requests.post(
        f"{sandbox.url}/receipts/{imp_uid}",
        json={"identifier": "01055554321"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=5,
    )
    assert created.status_code == 200
    result = cli(own_redis, sandbox, "settle", imp_uid)
    assert json.loads(result.stdout) == {
        "imp_uid": imp_uid,
        "receipt_key": f"iamport:{imp_uid}",
        "outcome": "issued",
    }
    event = ResultStream(own_redis.client()).wait(task_id)
    assert event["type"] == "cash_receipt.issued"
    assert event["data"]["receipt"]["apply_num"] == created.json()["response"]["apply_num"]
    assert sandbox.admin.issued_count(imp_uid) == 1


def test_settle_resends_when_nothing_was_issued(
    own_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """No receipt at i'mport: the job is handed back to the ledger, due now, for the sweeper."""
    ledger = ledger_on(own_redis, lease=0.2)
    claimed_and_abandoned(ledger, imp_uid, "t-1")
    result = cli(own_redis, sandbox, "settle", imp_uid)
    assert json.loads(result.stdout)["outcome"] == "resent"
    due = ledger.due_jobs(limit=10, regrace_seconds=60)
    assert [(job.imp_uid, job.state, job.task_id) for job in due] == [(imp_uid, "received", "t-1")]


def test_settle_waits_out_the_bound_after_a_post_was_sent(
    own_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """A worker died just after sending its POST: until IAMPORT_SETTLE_SECONDS after the send
    i'mport may still act on it, so settle looks at nothing (`settling`); after it, it settles."""
    ledger = ledger_on(own_redis, lease=0.2)
    claim = ledger.claim(imp_uid, task_id="t-1", payload={**PAYLOAD, "imp_uid": imp_uid})
    assert ledger.note_sent(imp_uid, fence=claim.fence, at=time.time(), op="issue")
    claimed_lease = int((ledger.raw_record(imp_uid) or {})["lease_until"]) / 1000
    wait_for(lambda: time.time() > claimed_lease, timeout=5, message="the lease to pass")
    result = cli(own_redis, sandbox, "settle", imp_uid, IAMPORT_SETTLE_SECONDS="60")
    assert json.loads(result.stdout)["outcome"] == "settling"
    assert sandbox.admin.requests(imp_uid) == []
    result = cli(own_redis, sandbox, "settle", imp_uid, IAMPORT_SETTLE_SECONDS="0")
    assert json.loads(result.stdout)["outcome"] == "resent"


def test_settle_leaves_a_job_in_flight_under_a_live_lease_alone(
    own_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """A worker may be in the middle of its POST: settle neither fences it out nor re-sends."""
    ledger = ledger_on(own_redis)
    claim = ledger.claim(imp_uid, task_id="t-1", payload={**PAYLOAD, "imp_uid": imp_uid})
    result = cli(own_redis, sandbox, "settle", imp_uid)
    assert json.loads(result.stdout)["outcome"] == "busy"
    record = ledger.raw_record(imp_uid)
    assert record is not None
    assert (record["state"], int(record["fence"])) == ("in_flight", claim.fence)
    assert sandbox.admin.requests(imp_uid) == []


def test_one_sweep_at_a_time(own_redis: RedisServer) -> None:
    """Two sweepers at once: the lock lets one re-send the due jobs, exactly once."""
    ledger = ledger_on(own_redis)
    for n in range(20):
        ledger.receive(f"imp_{n}", task_id=f"t-{n}", payload=PAYLOAD, resend_after=-1)
    sent: list[dict[str, Any]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def send(name: str, **options: Any) -> None:
        with lock:
            sent.append({"name": name, **options})

    sweepers = [
        Sweeper(ledger=ledger, client=own_redis.client(), send=send, interval=5) for _ in range(2)
    ]
    counts: list[int] = []

    def sweep(sweeper: Sweeper) -> None:
        barrier.wait()
        counts.append(sweeper.sweep_once())

    threads = [threading.Thread(target=sweep, args=(s,)) for s in sweepers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(counts) == [0, 20]
    assert sorted(message["task_id"] for message in sent) == sorted(f"t-{n}" for n in range(20))
    assert {message["name"] for message in sent} == {"issue_cash_receipt"}
    assert all(0 <= message["countdown"] <= 5 for message in sent)
    assert all("gAAAA" not in message["argsrepr"] for message in sent)


def test_the_sweeper_hands_the_metrics_each_job_it_re_sent(own_redis: RedisServer) -> None:
    """What it re-sent, job by job, of each kind: the count carries provider and kind."""
    ledger = ledger_on(own_redis)
    due = [JobKey.payment("imp_due"), JobKey.external("order-due")]
    for job in due:
        ledger.receive(job, task_id=f"t-{job.id}", payload=PAYLOAD, resend_after=-1)
    counted: list[list[JobKey]] = []
    sweeper = Sweeper(
        ledger=ledger,
        client=own_redis.client(),
        send=lambda *_, **__: None,
        interval=5,
        resent=counted.append,
    )
    assert sweeper.sweep_once() == 2
    assert [sorted(batch, key=lambda job: job.receipt_key) for batch in counted] == [
        sorted(due, key=lambda job: job.receipt_key)
    ]


def test_stuck_lists_a_job_the_sweeper_re_sends_forever(
    worker: ProcessOutput, redis_server: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """Every re-sent message fails before it can claim the job (a kept payload that does
    not validate, which only a record written by hand holds: one sealed under a dropped
    key now ends its job, ``payload_unreadable``).

    The sweeper keeps handing the job out, which pushes its due-index score
    forward each time; stuck still lists it, from the record's own due time.
    """
    client = redis_server.client()
    ledger = ledger_on(redis_server)
    task_id = str(uuid.uuid4())
    payload = {"imp_uid": imp_uid, "identifier": "123"}
    ledger.receive(imp_uid, task_id=task_id, payload=payload, resend_after=-5)
    event = ResultStream(client).wait(task_id, timeout=30)
    assert event["data"]["error"]["reason"] == "invalid_payload"
    wait_for(
        lambda: (client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) or 0) > time.time() * 1000,
        message="the sweeper to hand the job out (pushing its due score forward)",
    )
    result = cli(redis_server, sandbox, "stuck", "--older-than", "2", "--limit", "1000")
    assert result.returncode == 0, result.stderr
    listed = [json.loads(line) for line in result.stdout.splitlines()]
    mine = [record for record in listed if record["imp_uid"] == imp_uid]
    assert [(r["state"], r["task_id"]) for r in mine] == [("received", task_id)]
