"""A job whose last POST is unsettled is never reported failed before a settling lookup.

With RETRY_MAX_ATTEMPTS=1 the one attempt's POST times out and the sandbox acts on it later,
within IAMPORT_SETTLE_SECONDS. Giving up then would publish ``cash_receipt.failed`` while the
buyer gets a receipt. The job is handed back instead; the settling attempt only looks. A job
that still ended failed unsettled keeps its send time, so that a replay waits and looks first.
The sandbox issues a second receipt rather than refusing it, so a blind POST shows.
"""

from __future__ import annotations

import json

import pytest

from tests.support.commands import run_cashreceipt
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, wait_posts_processed
from tests.support.wait import wait_for
from tests.support.worker import producer_app, running_worker, worker_env
from worker.adapters.store.keys import ledger_key
from worker.celery.producer import enqueue_cancel, enqueue_issue

pytestmark = [pytest.mark.integration]

#: The read timeout, the sandbox's late processing of the POST, and the bound beyond both.
TIMEOUT = "1"
LATE_POST_MS = 1500
SETTLE_SECONDS = "2.5"


def _env(own_redis: RedisServer, sandbox: Sandbox, **overrides: str) -> dict[str, str]:
    settings = {
        "IAMPORT_TIMEOUT": TIMEOUT,
        "IAMPORT_SETTLE_SECONDS": SETTLE_SECONDS,
        "RETRY_MAX_ATTEMPTS": "1",
        **overrides,
    }
    return worker_env(own_redis.url, sandbox.url, **settings)


def _terminal_events(own_redis: RedisServer, imp_uid: str) -> list[str]:
    return [
        event["type"]
        for event in ResultStream(own_redis.client()).all()
        if event["data"].get("imp_uid") == imp_uid
    ]


def _wait_processed(sandbox: Sandbox, imp_uid: str) -> None:
    wait_posts_processed(sandbox, imp_uid, timeout=LATE_POST_MS / 1000 + 5)


def test_the_last_attempt_s_late_post_ends_issued_not_failed(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """The one attempt's POST times out at 1 s and is acted on at 1.5 s: one issued event."""
    honest_sandbox.script(imp_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"})
    producer = producer_app(own_redis.url)
    with running_worker(_env(own_redis, honest_sandbox)):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        event = ResultStream(own_redis.client()).wait(task_id, timeout=30)
        _wait_processed(honest_sandbox, imp_uid)
    producer.close()
    assert event["type"] == "cash_receipt.issued", event
    assert _terminal_events(own_redis, imp_uid) == ["cash_receipt.issued"]
    assert honest_sandbox.issued_count(imp_uid) == 1
    audit = honest_sandbox.audit()
    assert audit["payments"][imp_uid]["created"] == 1
    assert audit["blind_posts"] == 0
    assert len([r for r in honest_sandbox.requests(imp_uid) if r["method"] == "POST"]) == 1
    # Settled: a refund that comes next neither waits out the bound nor counts as resumed.
    assert not own_redis.client().hget(ledger_key(imp_uid), "sent_at")


def test_a_post_never_acted_on_fails_only_after_the_settling_lookup(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """The one POST hangs and is never acted on: the job is handed back, the settling attempt
    looks no earlier than the bound after the POST, finds nothing and does not POST: failed
    ``retries_exhausted``, the send time cleared (settled: a replay needs no wait)."""
    honest_sandbox.script(imp_uid, {"kind": "hang", "seconds": 2, "method": "POST"})
    producer = producer_app(own_redis.url)
    with running_worker(_env(own_redis, honest_sandbox)):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        event = ResultStream(own_redis.client()).wait(task_id, timeout=30)
    producer.close()
    assert event["type"] == "cash_receipt.failed", event
    assert event["data"]["error"]["reason"] == "retries_exhausted"
    assert _terminal_events(own_redis, imp_uid) == ["cash_receipt.failed"]
    requests_seen = honest_sandbox.requests(imp_uid)
    (post,) = [r for r in requests_seen if r["method"] == "POST"]
    last_lookup = [r for r in requests_seen if r["method"] == "GET"][-1]
    assert last_lookup["at"] >= post["at"] + float(SETTLE_SECONDS) - 0.05
    assert honest_sandbox.issued_count(imp_uid) == 0
    assert not own_redis.client().hget(ledger_key(imp_uid), "sent_at")


def test_the_last_attempt_s_late_delete_ends_cancelled(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """The cancel path: the one DELETE times out and is acted on late: cancelled, not failed."""
    producer = producer_app(own_redis.url)
    with running_worker(_env(own_redis, honest_sandbox)):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        issued = ResultStream(own_redis.client()).wait(task_id, timeout=30)
        assert issued["type"] == "cash_receipt.issued", issued
        honest_sandbox.script(imp_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "DELETE"})
        cancel_id = enqueue_cancel({"imp_uid": imp_uid}, app=producer)
        event = ResultStream(own_redis.client()).wait(cancel_id, timeout=30)
    producer.close()
    assert event["type"] == "cash_receipt.cancelled", event
    assert _terminal_events(own_redis, imp_uid) == ["cash_receipt.issued", "cash_receipt.cancelled"]
    assert [r["method"] for r in honest_sandbox.requests(imp_uid)].count("DELETE") == 1
    assert honest_sandbox.audit()["blind_deletes"] == 0
    assert not own_redis.client().hget(ledger_key(imp_uid), "sent_at")


def test_a_replay_of_a_job_failed_unsettled_waits_and_looks_first(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """Every lookup fails until the job ends failed with its POST unsettled (acted on late);
    the replay waits out the bound and looks: it adopts the receipt instead of POSTing again."""
    garbage = {"kind": "garbage", "status": 502, "method": "GET"}
    honest_sandbox.script(
        imp_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"}, garbage, garbage
    )
    env = _env(own_redis, honest_sandbox)
    producer = producer_app(own_redis.url)
    with running_worker(env):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        failed = ResultStream(own_redis.client()).wait(task_id, timeout=30)
        assert failed["type"] == "cash_receipt.failed", failed
        _wait_processed(honest_sandbox, imp_uid)
        replayed = run_cashreceipt(env, "replay", "--json", imp_uid)
        assert replayed.returncode == 0, replayed.stderr
        (outcome,) = [json.loads(line) for line in replayed.stdout.splitlines() if line.strip()]
        event = ResultStream(own_redis.client()).wait(str(outcome["task_id"]), timeout=30)
    producer.close()
    assert event["type"] == "cash_receipt.issued", event
    audit = honest_sandbox.audit()
    assert audit["payments"][imp_uid]["created"] == 1
    assert audit["blind_posts"] == 0
    assert len([r for r in honest_sandbox.requests(imp_uid) if r["method"] == "POST"]) == 1


def test_a_refund_that_takes_over_a_settling_issue_deletes_the_receipt(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """The one POST is acted on late; its job is parked to settle (attempts 1, ``sent_at``
    set) when a full refund takes it over. The cancellation's attempts start afresh: it
    waits out the bound, looks, finds the receipt live and DELETEs it, rather than reading
    the issue's POST as its own unsettled DELETE and ending ``cancel_failed``."""
    honest_sandbox.script(imp_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"})
    client = own_redis.client()
    # A settle wait longer than any countdown parks the issue; a long bound leaves the
    # refund time to take it over before it is due.
    env = _env(
        own_redis,
        honest_sandbox,
        IAMPORT_SETTLE_SECONDS="5",
        RETRY_COUNTDOWN_MAX="0.3",
        SWEEP_INTERVAL="0.2",
    )
    producer = producer_app(own_redis.url)
    with running_worker(env):
        issue_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)

        def parked_to_settle() -> bool:
            record = client.hgetall(ledger_key(imp_uid))
            return (record.get("state"), record.get("op"), record.get("attempts")) == (
                "received",
                "issue",
                "1",
            ) and bool(record.get("sent_at"))

        wait_for(parked_to_settle, timeout=20, message="the issue to park, unsettled")
        cancel_id = enqueue_cancel({"imp_uid": imp_uid}, app=producer)
        event = ResultStream(client).wait(cancel_id, timeout=30)
        stale = ResultStream(client).wait(issue_id, timeout=30)
    producer.close()
    assert event["type"] == "cash_receipt.cancelled", event
    assert event["data"]["receipt"] is not None, event
    assert (stale["type"], stale["data"]["error"]["reason"]) == ("cash_receipt.failed", "cancelled")
    requests_seen = honest_sandbox.requests(imp_uid)
    (post,) = [r for r in requests_seen if r["method"] == "POST"]
    (delete,) = [r for r in requests_seen if r["method"] == "DELETE"]
    assert delete["at"] >= post["at"] + 5 - 0.05  # after the bound on the issue's POST
    audit = honest_sandbox.audit()
    assert audit["payments"][imp_uid]["created"] == 1
    assert audit["payments"][imp_uid]["active"] == 0  # cancelled at the sandbox
    assert (audit["blind_posts"], audit["blind_deletes"]) == (0, 0)
    assert client.hget(ledger_key(imp_uid), "state") == "cancelled"


def test_a_re_issue_posted_by_the_settling_attempt_is_settled_before_it_fails(
    own_redis: RedisServer, honest_sandbox: Sandbox, imp_uid: str
) -> None:
    """A partial refund: the one DELETE is acted on late; the settling attempt finds it
    done, and the re-issue's POST (sent by that attempt, past the budget) is acted on late
    too. It is handed back, not reported failed: the next attempt only looks and adopts
    the new receipt."""
    honest_sandbox.seed_payment(imp_uid, amount=33000)
    client = own_redis.client()
    producer = producer_app(own_redis.url)
    with running_worker(_env(own_redis, honest_sandbox)):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        issued = ResultStream(client).wait(task_id, timeout=30)
        assert issued["type"] == "cash_receipt.issued", issued
        honest_sandbox.seed_payment(imp_uid, cancel_amount=11000)
        honest_sandbox.script(
            imp_uid,
            {"kind": "latency", "ms": LATE_POST_MS, "method": "DELETE"},
            {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"},
        )
        cancel_id = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
        results = ResultStream(client)
        wait_for(lambda: len(results.for_task(cancel_id)) == 2, timeout=40, message="2 events")
        _wait_processed(honest_sandbox, imp_uid)
    producer.close()
    cancelled, reissued = sorted(results.for_task(cancel_id), key=lambda e: e["id"])
    assert cancelled["type"] == "cash_receipt.cancelled", cancelled
    assert reissued["type"] == "cash_receipt.issued", reissued
    assert reissued["data"]["receipt"]["amount"] == 22000
    methods = [r["method"] for r in honest_sandbox.requests(imp_uid)]
    assert (methods.count("POST"), methods.count("DELETE")) == (2, 1)
    audit = honest_sandbox.audit()
    assert audit["payments"][imp_uid]["created"] == 2
    assert audit["payments"][imp_uid]["active"] == 1
    assert (audit["blind_posts"], audit["blind_deletes"]) == (0, 0)
    assert not client.hget(ledger_key(imp_uid), "sent_at")
