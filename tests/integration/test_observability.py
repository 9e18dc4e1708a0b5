"""Structured logs, from real worker processes on their own Redis.

Each test starts its own redis-server, so that no other worker (the session's
shares the session Redis) takes its tasks, and a fresh worker, whose counters
start at zero.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import pytest
import requests
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ingress import run_once, xadd
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import running_worker, worker_env

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
    payload = {"imp_uid": imp_uid, "identifier": PHONE, "buyer_tel": PHONE, **extra}
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
    """The outcome lines of one task message, in order: one per run of it."""
    return [
        line for line in lines if line["logger"] == "tasks.receipts" and line["task_id"] == task_id
    ]


def scrape(port: int) -> Samples:
    """The worker's /metrics, as {(sample name, labels): value}."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


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
        # The outcome line follows the event: wait for the last one of each task.
        wait_for(
            lambda: all(f'"task_id": "{task_id}"' in output.text for task_id in tasks.values()),
            message="every outcome line",
        )
    text = output.finish()
    lines = json_lines(text)

    assert any(line["level"] == "debug" for line in lines), "DEBUG lines were not written"
    assert any("Warm shutdown" in line["message"] for line in lines), "no JSON shutdown notice"
    if os.geteuid() == 0:  # Celery warns before it sets up logging: that line is JSON too
        assert any(line["logger"] == "py.warnings" for line in lines)
    for form in PHONE_FORMS:
        assert form not in text

    def runs(name: str) -> list[tuple[Any, ...]]:
        return [
            (line["attempt"], line["outcome"], line["reason"], line["provider_status"])
            for line in outcome_lines(lines, tasks[name])
        ]

    assert runs("ok") == [(1, "issued", None, 200)]
    assert runs("retry") == [(1, "retry", "provider_unavailable", 503), (2, "issued", None, 200)]
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
