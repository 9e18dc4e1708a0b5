"""Riding out an i'mport outage, and resuming after a worker dies: time compressed by settings.

Production waits minutes; these settings scale every delay down about a
hundredfold (backoff capped at 3 s instead of 300 s, parking past 0.3 s), so a
"one-hour" outage takes seconds and the same code paths run.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from celery import Celery

# This module's own Redis, sandbox and producer, in place of the session's.
from tests.support.module_services import (  # noqa: F401
    module_producer,
    module_redis,
    module_sandbox,
)
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import running_worker, worker_env
from worker.adapters.store.keys import ledger_key
from worker.celery.producer import enqueue_issue
from worker.config import timing

pytestmark = pytest.mark.integration


#: The backoff cap is compressed a hundredfold (300 s -> 3 s), so an hour of outage is this long.
COMPRESSED_HOUR = 36.0


def compressed_env(redis_url: str, sandbox_url: str, **extra: str) -> dict[str, str]:
    """Worker settings with time compressed about a hundredfold; the default attempt budget."""
    env = worker_env(
        redis_url,
        sandbox_url,
        IAMPORT_TIMEOUT="0.25",
        RETRY_BACKOFF_BASE="0.2",
        RETRY_BACKOFF_MAX="3",
        RETRY_COUNTDOWN_MAX="0.3",
        SWEEP_INTERVAL="0.2",
        **extra,
    )
    if "RETRY_MAX_ATTEMPTS" not in extra:
        del env["RETRY_MAX_ATTEMPTS"]  # worker_env's small test budget: use the product's
    return env


def test_outage_is_ridden_out_and_resumes_spread(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """Jobs park in the ledger through an outage and resume, spread out, when i'mport is back."""
    results = ResultStream(own_redis.client())
    own_sandbox.admin.set_rates(rates={"status_503": 1.0})
    outage_began = time.monotonic()
    with running_worker(compressed_env(own_redis.url, own_sandbox.url)):
        imp_uids = [f"outage_{uuid.uuid4().hex[:8]}_{n}" for n in range(30)]
        tasks = [
            enqueue_issue({"imp_uid": u, "identifier": "01055554321"}, app=producer)
            for u in imp_uids
        ]
        client = own_redis.client()

        def parked() -> list[str]:
            """Jobs that tried, failed, and now wait in the ledger for their next attempt."""
            records = [client.hgetall(ledger_key(u)) for u in imp_uids]
            return [
                u
                for u, record in zip(imp_uids, records, strict=True)
                if record.get("state") == "received" and int(record.get("attempts", 0)) >= 1
            ]

        # Parked, not waiting in a countdown: the ledger holds them with a next-attempt time.
        wait_for(lambda: len(parked()) >= 10, timeout=20, message="jobs parked in the ledger")
        record = client.hgetall(ledger_key(parked()[0]))
        assert int(record["next_attempt_at"]) > 0
        assert json.loads(record["last_error"])["status"] == 503
        # The outage lasts a (compressed) hour, and jobs are resumed and refused all along.
        wait_for(
            lambda: (
                time.monotonic() - outage_began >= COMPRESSED_HOUR
                and min(int(client.hget(ledger_key(u), "attempts") or 0) for u in imp_uids) >= 5
            ),
            timeout=COMPRESSED_HOUR + 60,
            interval=0.5,
            message="an hour of outage, with every job retrying through it",
        )
        assert not any(results.for_task(t) for t in tasks), "a job gave up during the outage"
        back_at = time.time()
        own_sandbox.admin.clear_faults()
        events = [results.wait(task_id, timeout=60) for task_id in tasks]

    assert {event["type"] for event in events} == {"cash_receipt.issued"}
    assert all(own_sandbox.admin.issued_count(u) == 1 for u in imp_uids)
    successes = sorted(
        request["at"]
        for request in own_sandbox.admin.requests()
        if request["method"] == "POST"
        and request["status"] == 200
        and request["imp_uid"] in imp_uids
    )
    assert successes[0] >= back_at - 0.5
    buckets = [int((at - successes[0]) / 0.25) for at in successes]
    busiest = max(buckets.count(bucket) for bucket in set(buckets))
    assert successes[-1] - successes[0] >= 1.0, "resumed jobs all arrived at once"
    assert busiest <= len(successes) // 2


def test_spent_budget_fails_and_stays_replayable(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """When the attempts run out the job fails with an event, stays in the ledger, and re-opens."""
    imp_uid = f"budget_{uuid.uuid4().hex[:8]}"
    results = ResultStream(own_redis.client())
    own_sandbox.admin.script(imp_uid, *[{"kind": "status", "status": 503}] * 200)
    with running_worker(compressed_env(own_redis.url, own_sandbox.url, RETRY_MAX_ATTEMPTS="4")):
        failed = results.wait(
            enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        )
        assert failed["data"]["error"]["reason"] == "retries_exhausted"
        assert failed["data"]["attempts"] == 4
        record = own_redis.client().hgetall(ledger_key(imp_uid))
        assert record["state"] == "failed"
        assert json.loads(record["payload"])["identifier_sealed"]
        own_sandbox.admin.clear_faults()
        replayed = results.wait(
            enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        )
    assert replayed["type"] == "cash_receipt.issued"
    assert replayed["data"]["attempts"] == 1
    assert own_sandbox.admin.issued_count(imp_uid) == 1


def test_job_of_a_killed_worker_resumes_within_the_bound(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """SIGKILL mid-call: another live worker finishes the job within visibility timeout + 30 s."""
    imp_uid = f"killed_{uuid.uuid4().hex[:8]}"
    results = ResultStream(own_redis.client())
    env = compressed_env(own_redis.url, own_sandbox.url)
    # What celeryconfig derives for these settings (IAMPORT_TIMEOUT 0.25, countdowns <= 0.3 s,
    # DUPLICATE_WAIT 20 s, IAMPORT_SETTLE_SECONDS 1 s).
    visibility = timing.minimum_visibility_timeout(
        iamport_timeout=0.25, longest_countdown=0.3, duplicate_wait=20, settle_seconds=1
    )
    own_sandbox.admin.script(imp_uid, {"kind": "hang", "seconds": 3600, "method": "POST"})
    with running_worker(env) as doomed, running_worker(env):
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        wait_for(
            lambda: any(r["method"] == "POST" for r in own_sandbox.admin.requests(imp_uid)),
            message="the POST to be in flight",
        )
        os.kill(doomed.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        event = results.wait(task_id, timeout=visibility + 30)
        resumed_after = time.monotonic() - killed_at
    assert event["type"] == "cash_receipt.issued"
    assert resumed_after <= visibility + 30
    assert own_sandbox.admin.issued_count(imp_uid) == 1
    print(f"\nkilled worker's job resumed after {resumed_after:.1f}s (bound {visibility + 30}s)")


@pytest.mark.redis_broker
def test_a_worker_holding_a_message_outlives_a_redis_restart(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """Redis dies while a worker holds an unacked message: the worker reconnects and goes on.

    Celery 5.7 detaches the lost connection's transport (``collect()``) before it
    closes the connection; closing the channel then restores its unacked messages
    through a pool built from no connection, and the AttributeError stopped the
    worker ("Unrecoverable error"): every worker holding a message, the whole
    fleet at once, on a Redis restart.
    """
    imp_uid = f"restart_{uuid.uuid4().hex[:8]}"
    results = ResultStream(own_redis.client())
    # Time compressed, but a countdown long enough to hold the message through the restart.
    compressed = compressed_env(own_redis.url, own_sandbox.url)
    env = {**compressed, "RETRY_BACKOFF_MAX": "30", "RETRY_COUNTDOWN_MAX": "30"}
    # A Retry-After that keeps the retry's message unacked in the worker, on its countdown.
    own_sandbox.admin.script(imp_uid, {"kind": "rate_limit", "retry_after": 6, "method": "POST"})
    with running_worker(env) as worker:
        task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
        wait_for(
            lambda: "Retry in" in worker.text and own_redis.client().hlen("unacked") == 1,
            message="the retry to be held unacked on its countdown",
        )
        own_redis.stop()
        own_redis.start()
        wait_for(
            lambda: worker.text.count("Connected to") >= 2 or not worker.alive,
            timeout=30,
            message="the worker to reconnect",
        )
        assert worker.alive, "the worker stopped when Redis restarted"
        assert "Unrecoverable error" not in worker.text
        event = results.wait(task_id, timeout=60)
    assert event["type"] == "cash_receipt.issued"
    assert own_sandbox.admin.issued_count(imp_uid) == 1
