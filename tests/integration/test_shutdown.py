"""Stopping a worker and rolling a deploy: nothing lost, nothing issued twice, nothing dropped.

A worker gets SIGTERM in the middle of a batch, while its tasks wait on a slow
i'mport. It stops taking messages, lets its tasks run for
WORKER_SOFT_SHUTDOWN_TIMEOUT, and hands back to the queue those it could not
finish (at their next request to i'mport). A second worker, started
afterwards, finishes the batch. Then a rolling deploy: a task only the newer
deploy knows is parked by the older worker, not dropped, and runs once the
newer worker is up and the parked messages are requeued.

They run on this module's own Redis, and with BROKER=rabbitmq on its own
virtual host, so that no other test's worker takes the batch.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
from celery import Celery

from tests.support.commands import WORKER, argv, run_cashreceipt

# This module's own Redis, sandbox and producer, in place of the session's.
from tests.support.module_services import (  # noqa: F401
    module_producer,
    module_redis,
    module_sandbox,
)
from tests.support.newer_tasks import NEWER_TASK, ran_key
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ROOT, ProcessOutput, running_worker, worker_env
from worker.adapters.store.keys import DEAD_MESSAGES_KEY, ledger_key
from worker.celery.producer import enqueue_issue

pytestmark = pytest.mark.integration

#: Every receipts request waits this long: tasks are in flight when SIGTERM comes.
LATENCY_MS = 2000
#: Shorter than one request, so the tasks that hold a request at SIGTERM must hand back.
SOFT_SHUTDOWN = 1
IAMPORT_TIMEOUT = 5
CONCURRENCY = 4


def env_for(redis: RedisServer, sandbox: Sandbox) -> dict[str, str]:
    """A worker's settings here: few threads, a short soft shutdown, slow i'mport."""
    return worker_env(
        redis.url,
        sandbox.url,
        WORKER_CONCURRENCY=str(CONCURRENCY),
        WORKER_SOFT_SHUTDOWN_TIMEOUT=str(SOFT_SHUTDOWN),
        IAMPORT_TIMEOUT=str(IAMPORT_TIMEOUT),
    )


def start_worker(env: dict[str, str], name: str, *extra: str) -> subprocess.Popen[str]:
    """``celery -A worker worker`` as compose starts it, with a node name."""
    return subprocess.Popen(
        argv(WORKER, "-n", name, *extra),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_sigterm_mid_batch_loses_nothing_and_issues_nothing_twice(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """In flight at SIGTERM: finished or handed back; a second worker ends every task once."""
    own_sandbox.admin.clear_faults()
    own_sandbox.admin.set_rates(latency_ms=LATENCY_MS)
    imp_uids = [f"stop_{uuid.uuid4().hex[:8]}_{n}" for n in range(16)]
    # Half of them drop the connection after the receipt is made: their task then looks
    # the receipt up, a second request, which a cancelled task never starts.
    for imp_uid in imp_uids[::2]:
        own_sandbox.admin.script(imp_uid, {"kind": "drop_after", "method": "POST"})
    env = env_for(own_redis, own_sandbox)
    client = own_redis.client()
    results = ResultStream(client)

    first = start_worker(env, f"first-{uuid.uuid4().hex[:6]}@%h")
    first_output = ProcessOutput(first)
    try:
        wait_for(lambda: " ready." in first_output.text, timeout=30, message="the first worker")
        tasks = {
            enqueue_issue({"imp_uid": u, "identifier": "01055554321"}, app=producer): u
            for u in imp_uids
        }

        def in_flight() -> int:
            states = [client.hget(ledger_key(u), "state") for u in imp_uids]
            return sum(state == "in_flight" for state in states)

        wait_for(lambda: in_flight() >= CONCURRENCY, timeout=30, message="a full pool in flight")
        first.send_signal(15)
        stopped_at = time.monotonic()
        # The bound: the soft shutdown, then at most the request each task holds.
        first.wait(timeout=SOFT_SHUTDOWN + 2 * IAMPORT_TIMEOUT + 10)
        took = time.monotonic() - stopped_at
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    text = first_output.finish()
    assert "Initiating Soft Shutdown" in text, text[-3000:]
    handed_back = text.count("handed back to the queue")
    assert handed_back >= 1, text[-3000:]
    finished_first = {task for task in tasks if results.for_task(task)}
    # It stopped taking work: most of the batch was never started there.
    assert len(finished_first) < len(imp_uids) - CONCURRENCY

    with running_worker(env, "-n", f"second-{uuid.uuid4().hex[:6]}@%h"):
        for task_id in tasks:
            wait_for(lambda t=task_id: results.for_task(t), timeout=90, message=f"task {task_id}")

    # Nothing lost: every task message ended in exactly one terminal event, an issued one.
    for task_id, imp_uid in tasks.items():
        events = results.for_task(task_id)
        assert [event["type"] for event in events] == ["cash_receipt.issued"], (imp_uid, events)
    # Nothing issued twice: one receipt per payment at i'mport.
    counts = own_sandbox.admin.receipts()["issued_counts"]
    assert {u: counts.get(u) for u in imp_uids} == dict.fromkeys(imp_uids, 1)
    print(
        f"\nshutdown: {len(finished_first)} finished by the first worker, {handed_back} handed "
        f"back, stopped {took:.1f}s after SIGTERM; {len(imp_uids)} receipts, one each"
    )


def test_a_task_only_the_newer_deploy_knows_waits_parked_for_it(
    own_redis: RedisServer, own_sandbox: Sandbox, producer: Celery
) -> None:
    """Rolling deploy: the old worker parks the new task (not dropped); the new worker runs it."""
    own_sandbox.admin.clear_faults()
    env = env_for(own_redis, own_sandbox)
    client = own_redis.client()
    payload = {"imp_uid": f"roll_{uuid.uuid4().hex[:8]}", "identifier": "01055554321"}

    with running_worker(env, "-n", f"old-{uuid.uuid4().hex[:6]}@%h") as old:
        task_id = str(producer.send_task(NEWER_TASK, args=[payload], queue="cash_receipts").id)

        def parked() -> bool:
            return any(task_id in item for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1))

        wait_for(parked, timeout=30, message="the old worker to park the newer task")
        # The worker logs after it has set the message aside: the line can come later.
        wait_for(
            lambda: f"unknown task '{NEWER_TASK}'" in old.text,
            timeout=10,
            message="the old worker to log the unknown task",
        )
    assert client.get(ran_key(task_id)) is None

    with running_worker(
        env, "-n", f"new-{uuid.uuid4().hex[:6]}@%h", "-I", "tests.support.newer_tasks"
    ):
        requeued = run_cashreceipt(env, "parked", "--requeue", "--json")
        assert requeued.returncode == 0, requeued.stderr
        wait_for(lambda: client.get(ran_key(task_id)), timeout=30, message="the newer task to run")
    assert not parked()
