"""Key rotation with real workers: a dropped key ends its payloads once; a re-seal saves them.

Issue 14, finding 5. Payloads are sealed under key A (a producer's message and its
ledger job, an issued payment's kept payload). Then the worker restarts with only
key B:

- without a re-seal, each message ends in one failure event, ``payload_unreadable``,
  its job terminal and out of the sweeper's index (a partial refund cancels nothing);
- after ``cashreceipt reseal`` (run with B first, A still configured), the same
  messages issue, and the partial refund cancels and re-issues.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from celery import Celery
from cryptography.fernet import Fernet

from tests.support.commands import run_cashreceipt
from tests.support.envelopes import body_of, envelope, envelope_dict
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import producer_app, running_worker, worker_env
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store import lua
from worker.adapters.store.dead_messages import (
    dead_message_record,
    keep_dead_message,
    list_dead_messages,
)
from worker.adapters.store.keys import DUE_KEY, ledger_key, payment_receipt_key
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.reseal import reseal
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.core.schemas import load_payload

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
PHONE = "01055554321"
UNREADABLE = "payload_unreadable"


def new_imp_uid() -> str:
    return f"imp_rot_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def app_a(own_redis: RedisServer) -> Iterator[Celery]:
    """A producer that seals under key A."""
    app = producer_app(own_redis.url)
    app.conf.pii_encryption_keys = [KEY_A]
    yield app
    app.close()


def env_with(own_redis: RedisServer, sandbox: Sandbox, keys: str) -> dict[str, str]:
    return worker_env(own_redis.url, sandbox.url, PII_ENCRYPTION_KEYS=keys, SWEEP_INTERVAL="0.5")


def issued_under_a(
    own_redis: RedisServer, sandbox: Sandbox, app_a: Celery, results: ResultStream
) -> str:
    """A payment issued by a worker holding key A: its job keeps a payload sealed under A."""
    imp_uid = new_imp_uid()
    sandbox.admin.seed_payment(imp_uid, amount=33000)
    with running_worker(env_with(own_redis, sandbox, KEY_A)):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=app_a)
        assert results.wait(task_id, timeout=30)["type"] == "cash_receipt.issued"
    return imp_uid


@dataclass(frozen=True)
class Queued:
    """Sent while no worker runs, sealed under A: an issue, and a partial refund of a payment
    issued under A."""

    fresh: str
    refunded: str
    issue: str
    refund: str
    results: ResultStream


@pytest.fixture
def queued(own_redis: RedisServer, sandbox: Sandbox, app_a: Celery) -> Queued:
    results = ResultStream(own_redis.client())
    refunded = issued_under_a(own_redis, sandbox, app_a, results)
    sandbox.admin.seed_payment(refunded, cancel_amount=11000)
    fresh = new_imp_uid()
    sandbox.admin.seed_payment(fresh)
    issue = enqueue_issue({"imp_uid": fresh, "identifier": PHONE}, app=app_a)
    refund = enqueue_cancel({"imp_uid": refunded, "amount": 11000}, app=app_a)
    return Queued(fresh, refunded, issue, refund, results)


def reason_of(event: dict[str, Any]) -> str | None:
    return (event["data"].get("error") or {}).get("reason")


def ledger_of(client: Any) -> Ledger:
    """The ledger as the worker builds it."""
    return Ledger(
        client,
        stream="cash_receipt.events",
        event_retention_seconds=3600,
        retention_seconds=3600,
        lease_seconds=60,
    )


def record(own_redis: RedisServer, imp_uid: str) -> dict[str, str]:
    return dict(own_redis.client().hgetall(ledger_key(imp_uid)))


def test_a_dropped_key_ends_each_payload_in_one_failure_event(
    own_redis: RedisServer, sandbox: Sandbox, app_a: Celery, queued: Queued
) -> None:
    fresh, refunded, issue, refund = queued.fresh, queued.refunded, queued.issue, queued.refund
    results = queued.results
    waiter = enqueue_issue({"imp_uid": fresh, "identifier": PHONE}, app=app_a)  # a duplicate

    with running_worker(env_with(own_redis, sandbox, KEY_B)) as worker:
        for task_id in (issue, waiter, refund):
            results.wait(task_id, timeout=30)
        client = own_redis.client()
        wait_for(
            lambda: (
                client.zscore(DUE_KEY, payment_receipt_key(fresh)) is None
                and client.zscore(DUE_KEY, payment_receipt_key(refunded)) is None
            ),
            message="both jobs out of the sweeper's index",
        )
        # Terminal: the sweeper has nothing of theirs to re-send; each message has one event.
        assert record(own_redis, fresh)["state"] == "failed"
        assert record(own_redis, refunded)["state"] == "issued"  # nothing was cancelled
        for task_id in (issue, waiter):
            [event] = results.for_task(task_id)
            assert event["type"] == "cash_receipt.failed"
            assert reason_of(event) == "payload_unreadable"
            assert event["data"]["error"]["retryable"] is True
        [cancel_event] = results.for_task(refund)
        assert cancel_event["type"] == "cash_receipt.cancel_failed"
        assert reason_of(cancel_event) == "payload_unreadable"
    assert sandbox.admin.issued_count(fresh) == 0
    assert not [r for r in sandbox.admin.requests(refunded) if r.get("method") == "DELETE"]
    assert PHONE not in worker.text
    assert len(results.for_task(issue)) == len(results.for_task(refund)) == 1


def test_a_reseal_lets_the_old_key_go(
    own_redis: RedisServer, sandbox: Sandbox, queued: Queued
) -> None:
    fresh, refunded, issue, refund = queued.fresh, queued.refunded, queued.issue, queued.refund
    results = queued.results
    kept_before = json.loads(record(own_redis, fresh)["payload"])["identifier_sealed"]

    env = env_with(own_redis, sandbox, f"{KEY_B},{KEY_A}")
    done = run_cashreceipt(env, "reseal", "--json")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["records"] == 2 and counts["unreadable"] == 0, counts
    assert PHONE not in done.stdout + done.stderr
    kept = json.loads(record(own_redis, fresh)["payload"])["identifier_sealed"]
    assert kept != kept_before
    # Run again: nothing left to re-seal.
    again = run_cashreceipt(env, "reseal", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout.splitlines()[-1])["records"] == 0

    # Key A dropped: the queued messages (sealed under A) run from their re-sealed jobs.
    with running_worker(env_with(own_redis, sandbox, KEY_B)):
        assert results.wait(issue, timeout=30)["type"] == "cash_receipt.issued"
        wait_for(lambda: len(results.for_task(refund)) == 2, message="the refund's two events")
    assert [e["type"] for e in results.for_task(refund)] == [
        "cash_receipt.cancelled",
        "cash_receipt.issued",
    ]
    assert sandbox.admin.issued_count(fresh) == 1
    assert record(own_redis, refunded)["state"] == "issued"


def test_reseal_without_a_key_refuses(own_redis: RedisServer, sandbox: Sandbox) -> None:
    env = worker_env(own_redis.url, sandbox.url, PII_ENCRYPTION_KEYS="", ALLOW_PLAINTEXT_PII="1")
    done: subprocess.CompletedProcess[str] = run_cashreceipt(env, "reseal")
    assert done.returncode == 2, (done.stdout, done.stderr)


def test_reseal_rewrites_records_and_parked_messages_once(own_redis: RedisServer) -> None:
    """Ledger records and parked bodies end under the newest key; a second run does nothing;
    a payload no key opens is listed, never changed; a worker's write is never overwritten."""
    client = own_redis.client()
    under_a, under_c = Sealer([KEY_A]), Sealer([Fernet.generate_key().decode()])
    ledger = ledger_of(client)
    sealed, lost = new_imp_uid(), new_imp_uid()
    payload = load_payload({"imp_uid": sealed, "identifier": PHONE}, under_a).to_message(under_a)
    ledger.receive(sealed, task_id="t-sealed", payload=payload, resend_after=3600)
    lost_payload = {"imp_uid": lost, "identifier_sealed": under_c.seal(PHONE)}
    ledger.receive(lost, task_id="t-lost", payload=lost_payload, resend_after=3600)
    body = body_of({"imp_uid": sealed, "identifier": PHONE, "buyer_name": "Kim"})
    keep_dead_message(
        client,
        dead_message_record(
            reason="test",
            queue="cash_receipts",
            envelope=envelope_dict(body),
            raw=None,
            sealer=under_a,
        ),
    )
    both = Sealer([KEY_B, KEY_A])

    done = reseal(client, both)
    assert (done.records, done.parked, done.unreadable) == (1, 1, [lost])
    assert not done.complete
    kept = json.loads(record(own_redis, sealed)["payload"])
    assert Sealer([KEY_B]).open(kept["identifier_sealed"]) == (PHONE, True)
    assert record(own_redis, lost)["payload"] == json.dumps(lost_payload)
    [parked] = list_dead_messages(client)
    args, _, _ = json.loads(base64.b64decode(parked["envelope"]["body"]))
    assert Sealer([KEY_B]).open(args[0]["identifier_sealed"]) == (PHONE, True)
    assert "Kim" in Sealer([KEY_B]).unseal(args[0]["buyer_sealed"])

    again = reseal(client, both)
    assert (again.records, again.parked, again.unreadable) == (0, 0, [lost])

    # The compare-and-set: a field a worker wrote after it was read is left as it is.
    script = client.register_script(lua.source("reseal_record"))
    now = record(own_redis, sealed)["payload"]
    assert script(keys=[ledger_key(sealed)], args=["payload", "what was read", "x"]) == 0
    assert record(own_redis, sealed)["payload"] == now


def test_a_bare_message_and_a_sweeper_resend_under_a_dropped_key_end_once(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """The two other ways an unreadable payload reaches a worker: a bare producer's Celery
    message (no ledger job before it), and the sweeper's re-send of a job whose message
    was lost. Each ends in one ``payload_unreadable`` event, its job failed and not due."""
    client = own_redis.client()
    results = ResultStream(client)
    under_a = Sealer([KEY_A])
    bare, lost = new_imp_uid(), new_imp_uid()
    ledger = ledger_of(client)
    resent = str(uuid.uuid4())
    kept = {"imp_uid": lost, "identifier_sealed": under_a.seal(PHONE)}
    ledger.receive(lost, task_id=resent, payload=kept, resend_after=-5)  # its message lost
    message = str(uuid.uuid4())
    body = body_of({"imp_uid": bare, "identifier_sealed": under_a.seal(PHONE)})
    client.lpush("cash_receipts", envelope(body, task_id=message))

    with running_worker(env_with(own_redis, sandbox, KEY_B)):
        for task_id, imp_uid in ((message, bare), (resent, lost)):
            event = results.wait(task_id, timeout=30)
            assert (event["type"], reason_of(event)) == ("cash_receipt.failed", UNREADABLE)
            wait_for(
                lambda imp_uid=imp_uid: record(own_redis, imp_uid).get("state") == "failed",
                message=f"the job of {imp_uid} to end failed",
            )
            assert client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is None
    assert len(results.for_task(message)) == len(results.for_task(resent)) == 1
    assert sandbox.admin.issued_count(bare) == sandbox.admin.issued_count(lost) == 0
