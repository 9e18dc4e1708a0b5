"""Structured logs and Prometheus metrics, from real worker processes on their own Redis.

Each test starts its own redis-server, so that no other worker (the session's
shares the session Redis) takes its tasks, and a fresh worker, whose counters
start at zero.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import redis
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ingress import run_once, xadd
from tests.support.payloads import external_payload
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import free_port, wait_for
from tests.support.worker import ROOT, running_worker, unready_worker, worker_env
from worker.adapters.observe.metrics import StateCollector, queue_depth
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.adapters.store.ledger import Ledger

pytestmark = pytest.mark.integration

PHONE = "01099990001"
#: How an identifier could be printed.
PHONE_FORMS = (PHONE, "010-9999-0001")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def new_uid(name: str) -> str:
    """An imp_uid with letters before its digits: the log mask leaves it whole."""
    return f"imp_obs_{name}_{uuid.uuid4().hex[:8]}"


def send(producer: Celery, imp_uid: str, **extra: Any) -> str:
    """What a bare checkout sends: the identifier in clear, in two fields."""
    return send_payload(
        producer, {"imp_uid": imp_uid, "identifier": PHONE, "buyer_tel": PHONE, **extra}
    )


def send_payload(producer: Celery, payload: dict[str, Any]) -> str:
    """``payload`` as a bare producer sends it: nothing recorded first, so that every
    message, a duplicate's too, is a worker's run."""
    return str(producer.send_task("issue_cash_receipt", args=[payload], queue="cash_receipts").id)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a process's output as JSON; fails on the first line that is not."""
    parsed = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line!r}") from None
        assert isinstance(item, dict), line
        parsed.append(item)
    return parsed


def outcome_lines(lines: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    """The outcome lines of one task message, by attempt: one per run of it.

    Not in the order printed: a run publishes its retry before it logs its own
    line, so the next run, on another thread, may log first.
    """
    mine = [
        line for line in lines if line["logger"] == "tasks.receipts" and line["task_id"] == task_id
    ]
    return sorted(mine, key=lambda line: int(line["attempt"]))


def every_run_logged(text: str, task_ids: Iterable[str]) -> bool:
    """Whether each task has logged a last run, and as many lines as that run's attempt."""
    lines = json_lines(text)
    for task_id in task_ids:
        runs = outcome_lines(lines, task_id)
        if not runs or runs[-1]["outcome"] == "retry" or len(runs) < runs[-1]["attempt"]:
            return False
    return True


def scrape(port: int) -> Samples:
    """The worker's /metrics, as {(sample name, labels): value}."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


#: The counters a run adds one to as it ends, after its event and its outcome line.
RUN_COUNTERS = frozenset(
    f"cashreceipt_{name}_total"
    for name in (
        "receipts_issued",
        "receipts_failed",
        "retries",
        "duplicates_absorbed",
        "task_errors",
    )
)


def runs_counted(samples: Samples) -> float:
    """How many issue runs the counters have seen end."""
    return sum(count for (name, _), count in samples.items() if name in RUN_COUNTERS)


#: The labels of every count about a V1 payment's job.
PAYMENT = {"provider": "iamport", "kind": "payment"}


def scrape_when(port: int, ready: Callable[[Samples], bool], *, message: str) -> Samples:
    """The worker's /metrics once ``ready`` says so (within 15 s)."""

    def scraped() -> Samples | None:
        samples = scrape(port)
        return samples if ready(samples) else None

    found: Samples = wait_for(scraped, timeout=15, message=message)
    return found


def scrape_counted(port: int, *, runs: int) -> Samples:
    """The worker's /metrics once its counters have seen ``runs`` issue runs end."""
    return scrape_when(
        port, lambda samples: runs_counted(samples) >= runs, message=f"{runs} runs to be counted"
    )


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (nothing counted yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_json_worker_prints_only_json_lines_and_one_outcome_line_per_run(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """LOG_FORMAT=json, at DEBUG: every line parses, each run's outcome line has its fields."""
    producer = Celery("checkout", broker=own_redis.url)
    results = ResultStream(own_redis.client())
    uid = {name: new_uid(name) for name in ("ok", "retry", "rejected", "invalid")}
    sandbox.admin.script(uid["retry"], {"kind": "status", "status": 503, "method": "POST"})
    sandbox.admin.script(
        uid["rejected"],
        *[{"kind": "reject", "message": f"PG: {PHONE} refused", "method": "POST"}] * 3,
    )
    env = worker_env(own_redis.url, sandbox.url, LOG_FORMAT="json", RETRY_MAX_ATTEMPTS="3")
    with running_worker(env, "--loglevel", "DEBUG") as output:
        tasks = {
            "ok": send(producer, uid["ok"]),
            "retry": send(producer, uid["retry"]),
            "rejected": send(producer, uid["rejected"]),
            "invalid": send(producer, uid["invalid"], tax_free=-1),
        }
        events = {name: results.wait(task_id, timeout=30) for name, task_id in tasks.items()}
        # A run logs its outcome line after its event, and maybe after the next run's.
        wait_for(lambda: every_run_logged(output.text, tasks.values()), message="every run's line")
    text = output.finish()
    lines = json_lines(text)

    assert any(line["level"] == "debug" for line in lines), "DEBUG lines were not written"
    # SIGTERM is the bounded soft (cold) shutdown: README, "Stopping and rolling deploys".
    assert any("Cold shutdown" in line["message"] for line in lines), "no JSON shutdown notice"
    if os.geteuid() == 0:  # Celery warns before it sets up logging: that line is JSON too
        assert any(line["logger"] == "py.warnings" for line in lines)
    for form in PHONE_FORMS:
        assert form not in text

    def runs(name: str) -> list[tuple[Any, ...]]:
        return [
            (line["attempt"], line["outcome"], line["reason"], line["provider_status"])
            + ((line["provider_code"],) if line["provider_status"] == 200 else ())
            for line in outcome_lines(lines, tasks[name])
        ]

    # A clean answer is i'mport's 200 with its envelope's code 0 (the client says so).
    assert runs("ok") == [(1, "issued", None, 200, 0)]
    assert runs("retry") == [(1, "retry", "provider_unavailable", 503), (2, "issued", None, 200, 0)]
    assert runs("rejected") == [
        (1, "retry", "issuance_failed", 500),
        (2, "retry", "issuance_failed", 500),
        (3, "failed", "rejected", 500),
    ]
    assert runs("invalid") == [(1, "failed", "invalid_payload", None)]
    assert events["rejected"]["data"]["error"]["reason"] == "rejected"
    for name, task_id in tasks.items():
        for line in outcome_lines(lines, task_id):
            assert line["imp_uid"] == uid[name]
            assert line["task"] == "issue_cash_receipt"
            assert line["duplicate"] is False
            assert isinstance(line["duration_ms"], int | float)
            assert line["duration_ms"] >= 0
            assert line["level"] == ("warning" if line["outcome"] == "failed" else "info")


def test_json_ingress_prints_only_json_lines(own_redis: RedisServer, sandbox: Sandbox) -> None:
    """The ingress process logs JSON too, masked, for a good entry and a malformed one."""
    client = own_redis.client()
    xadd(
        client,
        "payment.events",
        "payment.confirmed",
        {"imp_uid": new_uid("in"), "identifier": PHONE},
    )
    xadd(
        client,
        "payment.events",
        "payment.confirmed",
        {"imp_uid": new_uid("bad"), "identifier": "1"},
    )
    env = worker_env(own_redis.url, sandbox.url, LOG_FORMAT="json")
    code, log = run_once(env)
    assert code == 0, log
    messages = [line["message"] for line in json_lines(log)]
    assert any("payment.confirmed enqueued as task" in message for message in messages)
    assert any("is malformed" in message for message in messages)
    for form in PHONE_FORMS:
        assert form not in log


@pytest.mark.parametrize(
    "pool",
    ["threads", "prefork"],
)
def test_counters_add_up_across_the_worker_processes(
    pool: str, own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """Issued, failed by reason, retries, duplicates and i'mport latencies, read over HTTP.

    With the prefork pool two child processes run the tasks (two slow POSTs keep
    both busy at once), and the main process, which runs none, serves the sums.
    """
    port = free_port()
    producer = Celery("checkout", broker=own_redis.url)
    results = ResultStream(own_redis.client())
    uid = {name: new_uid(name) for name in ("slow1", "slow2", "ok", "retry", "rejected", "bad")}
    for name in ("slow1", "slow2"):
        sandbox.admin.script(uid[name], {"kind": "latency", "ms": 700, "method": "POST"})
    sandbox.admin.script(uid["retry"], {"kind": "status", "status": 503, "method": "POST"})
    sandbox.admin.script(uid["rejected"], *[{"kind": "reject", "method": "POST"}] * 3)
    env = worker_env(
        own_redis.url,
        sandbox.url,
        WORKER_POOL=pool,
        WORKER_CONCURRENCY="2",
        METRICS_PORT=str(port),
        METRICS_ADDRESS="127.0.0.1",
        LOG_FORMAT="json",
    )
    # Six payments: the retried one runs twice, the rejected one three times; two duplicates.
    runs = 1 + 1 + 1 + 2 + 3 + 1 + 2
    with running_worker(env) as output:
        first = [
            send(producer, uid[name]) for name in ("slow1", "slow2", "ok", "retry", "rejected")
        ]
        first.append(send(producer, uid["bad"], tax_free=-1))
        for task_id in first:
            results.wait(task_id, timeout=30)
        duplicates = [send(producer, uid["ok"]), send(producer, uid["slow1"])]
        for task_id in duplicates:
            assert results.wait(task_id, timeout=30)["data"]["duplicate"] is True
        samples = scrape_counted(port, runs=runs)
        lines = json_lines(output.text)

    issued = [e for e in results.all() if e["type"] == "cash_receipt.issued"]
    assert value(samples, "cashreceipt_receipts_issued_total", **PAYMENT) == 4
    assert len([e for e in issued if not e["data"]["duplicate"]]) == 4
    failed = "cashreceipt_receipts_failed_total"
    assert value(samples, failed, **PAYMENT, reason="rejected") == 1
    assert value(samples, failed, **PAYMENT, reason="invalid_payload") == 1
    retries = "cashreceipt_retries_total"
    retried = {**PAYMENT, "task": "issue", "how": "countdown"}
    assert value(samples, retries, **retried, cause="provider_unavailable") == 1
    assert value(samples, retries, **retried, cause="issuance_failed") == 2
    duplicates = "cashreceipt_duplicates_absorbed_total"
    assert value(samples, duplicates, **PAYMENT, task="issue") == 2
    latency = "cashreceipt_iamport_request_duration_seconds_count"
    assert value(samples, latency, method="POST", endpoint="receipts", status="200") == 4
    assert value(samples, latency, method="POST", endpoint="receipts", status="503") == 1
    assert value(samples, latency, method="POST", endpoint="receipts", status="500") == 3
    slow = "cashreceipt_iamport_request_duration_seconds_bucket"
    # The two slow POSTs took at least 0.7 s: above the 0.5 s bucket, within the 1 s one.
    assert (
        value(samples, latency, method="POST", endpoint="receipts", status="200")
        - value(samples, slow, method="POST", endpoint="receipts", status="200", le="0.5")
        == 2
    )
    assert value(samples, "cashreceipt_ledger_jobs", state="failed") == 1
    assert value(samples, "cashreceipt_ledger_jobs", state="in_flight") == 0
    assert value(samples, "cashreceipt_queue_messages", queue="cash_receipts") == 0
    assert value(samples, "cashreceipt_state_up") == 1

    # Everything served is in the README's table.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    served = {name for name, _ in samples if name.startswith("cashreceipt_")}
    for name in served:
        family = re.sub(r"_(total|bucket|count|sum|created)$", "", name)
        assert f"`{family}" in readme, f"{family} is not documented"

    # Which processes ran the tasks, by their outcome lines.
    pids = {line["pid"] for line in lines if line["logger"] == "tasks.receipts"}
    if pool == "prefork":
        assert len(pids) >= 2, pids
        assert output.pid not in pids
    else:
        assert pids == {output.pid}


def test_an_external_receipts_runs_are_counted_as_kind_external(
    own_redis: RedisServer, sandbox: Sandbox
) -> None:
    """Issue 15: an external receipt issued, the same sale again (a duplicate), another
    sale under its merchant_uid (id_conflict) and its full refund count with
    provider="iamport", kind="external"; a payment's issue beside them with kind="payment"."""
    port = free_port()
    producer = Celery("checkout", broker=own_redis.url)
    results = ResultStream(own_redis.client())
    merchant_uid = f"order-obs-{uuid.uuid4().hex[:8]}"
    external = {"provider": "iamport", "kind": "external"}
    cancelled = "cashreceipt_receipts_cancelled_total"
    env = worker_env(
        own_redis.url, sandbox.url, METRICS_PORT=str(port), METRICS_ADDRESS="127.0.0.1"
    )
    with running_worker(env):
        for payload in (
            external_payload(merchant_uid),
            external_payload(merchant_uid),
            external_payload(merchant_uid, amount=11000),
            {"imp_uid": new_uid("beside"), "identifier": PHONE},
        ):
            results.wait(send_payload(producer, payload), timeout=30)
        refund = {"kind": "external", "merchant_uid": merchant_uid}
        refunded = producer.send_task("cancel_cash_receipt", args=[refund], queue="cash_receipts")
        assert results.wait(str(refunded.id), timeout=30)["type"] == "cash_receipt.cancelled"
        samples = scrape_when(
            port,
            lambda found: runs_counted(found) >= 4 and value(found, cancelled, **external) > 0,
            message="the four issue runs and the refund to be counted",
        )
    assert value(samples, "cashreceipt_receipts_issued_total", **external) == 1
    assert value(samples, "cashreceipt_duplicates_absorbed_total", **external, task="issue") == 1
    assert (
        value(samples, "cashreceipt_receipts_failed_total", **external, reason="id_conflict") == 1
    )
    assert value(samples, cancelled, **external) == 1
    assert value(samples, "cashreceipt_receipts_issued_total", **PAYMENT) == 1
    counted = {name: dict(labels) for name, labels in samples if name in RUN_COUNTERS}
    assert all({"provider", "kind"} <= set(labels) for labels in counted.values())
    assert merchant_uid not in str(samples)


def test_state_is_read_from_redis_and_the_broker_at_scrape_time(own_redis: RedisServer) -> None:
    """Queue depth, ledger jobs by state, the oldest due job, parked messages, ingress backlog."""
    client = own_redis.client()
    ledger = Ledger(
        client,
        stream="cash_receipt.events",
        event_retention_seconds=600,
        retention_seconds=600,
        lease_seconds=30,
    )
    payload = {"imp_uid": "x", "identifier_sealed": "gAAAA"}
    ledger.receive("imp_due", task_id="t-due", payload=payload, resend_after=-120)
    ledger.receive("imp_later", task_id="t-later", payload=payload, resend_after=600)
    ledger.claim("imp_running", task_id="t-running", payload=payload)
    claim = ledger.claim("imp_failed", task_id="t-failed", payload=payload)
    ledger.finish(
        "imp_failed",
        fence=claim.fence,
        state="failed",
        task_id="t-failed",
        event_type="cash_receipt.failed",
        data={"task_id": "t-failed", "imp_uid": "imp_failed"},
        error={"reason": "rejected"},
    )
    producer = Celery("checkout", broker=own_redis.url)
    for _ in range(3):
        producer.send_task("issue_cash_receipt", args=[{}], queue="cash_receipts")
    client.lpush(DEAD_MESSAGES_KEY, "{}")
    xadd(client, "payment.events", "payment.confirmed", {"imp_uid": "imp_waiting"})

    def read(server_client: redis.Redis) -> dict[str, Any]:
        collector = StateCollector(
            client=lambda: server_client,
            queue_depth=lambda: queue_depth(producer, "cash_receipts"),
            queue="cash_receipts",
            ingress_stream="payment.events",
        )
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in collector.collect()
            for sample in family.samples
        }

    state = read(client)
    assert state[("cashreceipt_queue_messages", (("queue", "cash_receipts"),))] == 3
    assert state[("cashreceipt_ledger_jobs", (("state", "received"),))] == 2
    assert state[("cashreceipt_ledger_jobs", (("state", "in_flight"),))] == 1
    assert state[("cashreceipt_ledger_jobs", (("state", "failed"),))] == 1
    assert 119 <= state[("cashreceipt_ledger_oldest_due_seconds", ())] < 150
    assert state[("cashreceipt_parked_messages", ())] == 1
    assert state[("cashreceipt_ingress_backlog_entries", ())] == 1
    assert state[("cashreceipt_state_up", ())] == 1
    empty = Celery("checkout", broker=own_redis.url)
    assert queue_depth(empty, "no_such_queue") == 0

    own_redis.stop()
    assert read(client) == {("cashreceipt_state_up", ()): 0}


def test_a_metrics_port_in_use_stops_the_start(own_redis: RedisServer, sandbox: Sandbox) -> None:
    """A second worker on the port of the first would be invisible: it refuses, and says why."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = worker_env(
            own_redis.url, sandbox.url, METRICS_PORT=str(port), METRICS_ADDRESS="127.0.0.1"
        )
        with unready_worker(env) as (process, output):
            wait_for(lambda: process.poll() is not None, timeout=30, message="the worker to exit")
            text = output.finish()
    assert process.returncode != 0
    assert f"METRICS_PORT={port} on 127.0.0.1 cannot be served" in text
    assert "set METRICS_PORT=0" in text
    assert " ready." not in text
