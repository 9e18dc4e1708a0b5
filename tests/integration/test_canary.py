"""The canary: recognisable identifiers go in; none comes out anywhere but at i'mport.

Fake identifiers are sent through a bare ``send_task`` (plain) and through the
helper (sealed), and driven through success, rejection, retries, exhaustion, an
unknown task, a killed worker (whose job is driven to its end) and Flower. Then
every place an identifier could leak is dumped and searched: the worker's log
at DEBUG (as text, and as JSON lines), its /metrics, Flower's log, API and UI
pages, every Redis key and value (with the base64 body of every kombu envelope
decoded: queues, the unacked hash, parked messages), and the result events.
The i'mport secret, the access token and the Fernet key are searched for too.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import free_port, wait_for
from tests.support.worker import (
    BIN,
    ROOT,
    TEST_PII_KEY,
    ProcessOutput,
    producer_app,
    running_worker,
    stop,
    worker_env,
)
from worker.adapters.store.keys import DEAD_MESSAGES_KEY
from worker.celery.producer import enqueue_issue
from worker.config import timing

pytestmark = pytest.mark.integration
AUTH = ("ops", "canary-pass-123")

# Recognisable fakes, one per path: 0109 + a marker + a number.
CANARIES = {
    "bare_ok": "01097770001",
    "helper_ok": "01097770002",
    "bare_retry": "01097770003",
    "helper_rejected": "01097770004",
    "bare_exhausted": "01097770005",
    "helper_killed": "01097770006",
    "bare_invalid": "01097770007",
    "bare_unknown": "01097770008",
    "bare_unknown_field": "01097770009",
    "bare_misspelt": "01097770010",
    "bare_headers": "01097770011",
    "bare_unknown_headers": "01097770012",
}
#: Time compressed so that the killed worker's job ends within the test.
IAMPORT_TIMEOUT, DUPLICATE_WAIT, RETRY_BACKOFF_MAX = 0.5, 2.0, 0.2
VISIBILITY = timing.minimum_visibility_timeout(
    iamport_timeout=IAMPORT_TIMEOUT,
    longest_countdown=RETRY_BACKOFF_MAX,
    duplicate_wait=DUPLICATE_WAIT,
    settle_seconds=1,  # worker_env's IAMPORT_SETTLE_SECONDS
)


def forms(identifier: str) -> list[str]:
    """The ways an identifier could be printed."""
    return [identifier, f"{identifier[:3]}-{identifier[3:7]}-{identifier[7:]}"]


def envelope_bodies(value: Any) -> list[str]:
    """The decoded bodies of every kombu envelope in ``value`` (JSON text, or lists of it).

    kombu stores a message body base64-encoded: searching the raw value for an
    identifier would pass whatever the body held.
    """
    if isinstance(value, list | tuple | set):
        return [body for item in value for body in envelope_bodies(item)]
    if isinstance(value, dict):
        found = [body for item in value.values() for body in envelope_bodies(item)]
        properties = value.get("properties")
        encoded = value.get("body")
        if isinstance(properties, dict) and isinstance(encoded, str):
            if properties.get("body_encoding") == "base64":
                try:
                    found.append(base64.b64decode(encoded).decode("utf-8", "replace"))
                except (binascii.Error, ValueError):
                    found.append(encoded)
            else:
                found.append(encoded)
        return found
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return envelope_bodies(json.loads(value))
        except ValueError:
            return []
    return []


def dump_redis(client: redis.Redis) -> tuple[str, list[str]]:
    """Every key and value in the database, as text; and every envelope body, decoded."""
    lines, bodies = [], []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value: Any
        if kind == "string":
            value = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        if kind == "hash":
            decoded = envelope_bodies(list(value.values()))
        elif kind == "zset":
            decoded = envelope_bodies([member for member, _ in value])
        else:
            decoded = envelope_bodies(value)
        bodies.extend(decoded)
        lines.append(f"{key} {value!r} {decoded!r}")
    return "\n".join(lines), bodies


@pytest.fixture(scope="module")
def canary_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis of the canary's own, so its dump holds only what these tests wrote."""
    server = RedisServer(Path(tmp_path_factory.mktemp("canary-redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def canary_env(canary_redis: RedisServer, sandbox: Sandbox) -> dict[str, str]:
    """Worker settings: DEBUG-level logs are searched too; time compressed."""
    return worker_env(
        canary_redis.url,
        sandbox.url,
        RETRY_MAX_ATTEMPTS="3",
        IAMPORT_TIMEOUT=str(IAMPORT_TIMEOUT),
        DUPLICATE_WAIT=str(DUPLICATE_WAIT),
        RETRY_BACKOFF_MAX=str(RETRY_BACKOFF_MAX),
        SWEEP_INTERVAL="0.5",
    )


@pytest.fixture(scope="module")
def flower_log(
    canary_env: dict[str, str], canary_redis: RedisServer
) -> Iterator[tuple[str, ProcessOutput]]:
    """Flower on the canary's Redis, with its output captured."""
    port = free_port()
    process = subprocess.Popen(
        [str(BIN / "celery"), "-A", "worker", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT,
        env={**canary_env, "FLOWER_BASIC_AUTH": ":".join(AUTH)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput(process)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url), timeout=30, message="Flower")
        yield url, output
    finally:
        stop(process)


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthcheck", timeout=1).ok
    except requests.RequestException:
        return False


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_identifier_leaks_anywhere(
    log_format: str,
    canary_env: dict[str, str],
    canary_redis: RedisServer,
    sandbox: Sandbox,
    flower_log: tuple[str, ProcessOutput],
    imp_uid: str,
) -> None:
    """Zero hits for any canary in logs, metrics, Flower, Redis and events after every path ran."""
    flower_url, flower_output = flower_log
    metrics_port = free_port()
    env = {
        **canary_env,
        "LOG_FORMAT": log_format,
        "METRICS_PORT": str(metrics_port),
        "METRICS_ADDRESS": "127.0.0.1",
    }
    producer = producer_app(canary_redis.url)
    producer.conf.pii_encryption_keys = [TEST_PII_KEY]
    results = ResultStream(canary_redis.client())
    uid = {name: f"{imp_uid}_{name}" for name in CANARIES}

    def bare(name: str, headers: dict[str, str] | None = None, **extra: Any) -> str:
        payload = {
            "imp_uid": uid[name],
            "identifier": CANARIES[name],
            "buyer_tel": CANARIES[name],
            **extra,
        }
        return str(
            producer.send_task(
                "issue_cash_receipt", args=[payload], queue="cash_receipts", **(headers or {})
            ).id
        )

    def in_headers(name: str) -> dict[str, str]:
        """The protocol headers a producer writes as it likes, each holding the canary
        (issue 14's review: ``shadow`` became the task's name in Flower and the logs)."""
        number = CANARIES[name]
        return {
            "shadow": number,
            "root_id": f"{number[:3]}-{number[3:7]}-{number[7:]}",
            "parent_id": f"tel_{number}",
        }

    def helper(name: str) -> str:
        return enqueue_issue(
            {"imp_uid": uid[name], "identifier": CANARIES[name], "buyer_tel": CANARIES[name]},
            app=producer,
        )

    # A PG message that echoes the identifier: it must be masked before it is shown.
    echo = f"PG: identifier {CANARIES['helper_rejected']} refused"
    sandbox.admin.script(
        uid["helper_rejected"], *[{"kind": "reject", "message": echo, "method": "POST"}] * 3
    )
    sandbox.admin.script(uid["bare_retry"], {"kind": "status", "status": 503, "method": "POST"})
    sandbox.admin.script(uid["bare_exhausted"], *[{"kind": "status", "status": 504}] * 20)
    sandbox.admin.script(uid["helper_killed"], {"kind": "hang", "seconds": 30, "method": "POST"})

    worker_log = ""
    with running_worker(env, "--loglevel", "DEBUG") as first:
        killed_task = helper("helper_killed")
        wait_for(
            lambda: any(
                r["method"] == "POST" for r in sandbox.admin.requests(uid["helper_killed"])
            ),
            message="the doomed POST to be in flight",
        )
        os.kill(first.pid, signal.SIGKILL)
        wait_for(lambda: not first.alive, message="the kill")
        worker_log += first.finish()
    with running_worker(env, "--loglevel", "DEBUG") as second:
        tasks = [
            bare("bare_ok"),
            helper("helper_ok"),
            bare("bare_retry"),
            helper("helper_rejected"),
            bare("bare_exhausted"),
            bare("bare_invalid", tax_free=-1),
            # Fields the schema does not know: dropped, and shown nowhere (issue 14, finding 4).
            bare("bare_unknown_field", customer_tel=CANARIES["bare_unknown_field"]),
            str(
                producer.send_task(
                    "issue_cash_receipt",
                    args=[
                        {"imp_uid": uid["bare_misspelt"], "identifer": CANARIES["bare_misspelt"]}
                    ],
                    queue="cash_receipts",
                ).id
            ),
            bare("bare_headers", headers=in_headers("bare_headers")),
        ]
        unknown = str(
            producer.send_task(
                "reissue_cash_receipt_v2",
                args=[{"imp_uid": uid["bare_unknown"], "identifier": CANARIES["bare_unknown"]}],
                queue="cash_receipts",
            ).id
        )
        unknown_with_headers = str(
            producer.send_task(
                "reissue_cash_receipt_v2",
                args=[{"imp_uid": uid["bare_unknown_headers"]}],
                queue="cash_receipts",
                group_id=CANARIES["bare_unknown_headers"],
                **in_headers("bare_unknown_headers"),
            ).id
        )
        events = [results.wait(task_id, timeout=30) for task_id in tasks]
        assert [e["type"].rsplit(".", 1)[1] for e in events] == [
            "issued", "issued", "issued", "failed", "failed", "failed", "issued", "failed",
            "issued",
        ]  # fmt: skip
        # The killed worker's job resumes (sweeper, or kombu's restore) and ends.
        killed = results.wait(killed_task, timeout=VISIBILITY + 30)
        assert killed["type"] == "cash_receipt.issued"
        client = canary_redis.client()
        wait_for(
            lambda: all(
                any(task_id in item for item in client.lrange(DEAD_MESSAGES_KEY, 0, -1))
                for task_id in (unknown, unknown_with_headers)
            ),
            message="the unknown tasks to be parked",
        )
        flower_api = _flower_answers(flower_url, [*tasks, killed_task])
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        worker_log += second.text

    redis_dump, bodies = dump_redis(canary_redis.client())
    assert any("identifier_sealed" in body for body in bodies), "no envelope body was decoded"
    token_key = next(iter(canary_redis.client().scan_iter("iamport:token:*")))
    tokens = {
        canary_redis.client().get(token_key),
        sandbox.admin.token()["current"]["access_token"],
    }
    everything = {
        "worker log": worker_log,
        "worker metrics": metrics,
        "flower log": flower_output.text,
        "flower api and ui": flower_api,
        "redis": redis_dump,
        "events": json.dumps(results.all(), ensure_ascii=False),
    }
    if log_format == "json":
        # The second worker's lines (the first was killed, perhaps mid-line).
        lines = [json.loads(line) for line in second.text.splitlines() if line.strip()]
        assert any(line["level"] == "debug" for line in lines), "no DEBUG line was searched"
    else:
        assert "DEBUG" in worker_log, (
            "the worker did not log at DEBUG; the search would prove little"
        )
    # With the killed job; every count about a job names its provider and kind.
    assert 'cashreceipt_receipts_issued_total{kind="payment",provider="iamport"} 6.0' in metrics
    assert "<sealed>" in flower_api or "****" in flower_api
    for name, identifier in CANARIES.items():
        for form in forms(identifier):
            hits = [place for place, text in everything.items() if form in text]
            assert not hits, f"{name} ({form}) leaked into {hits}"
    secrets = {
        "IAMPORT_SECRET": canary_env["IAMPORT_SECRET"],
        "the Fernet key": TEST_PII_KEY,
        **{f"access token {n}": token for n, token in enumerate(tokens) if token},
    }
    # The token cache holds the token by design: every other key must not.
    everything["redis"] = "\n".join(
        line for line in redis_dump.splitlines() if not line.startswith(token_key)
    )
    for name, secret in secrets.items():
        hits = [place for place, text in everything.items() if secret in text]
        assert not hits, f"{name} leaked into {hits}"


def _flower_answers(url: str, task_ids: list[str]) -> str:
    """Flower's API answers and UI pages about the tasks, once it has seen them all."""

    def get(path: str, **params: str) -> str:
        answer = requests.get(f"{url}{path}", params=params, auth=AUTH, timeout=10)
        assert answer.ok, (path, answer.status_code)
        return answer.text

    def seen() -> str | None:
        listing = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5)
        if not all(task_id in listing.json() for task_id in task_ids):
            return None
        infos = [get(f"/api/task/info/{task_id}") for task_id in task_ids]
        pages = [get(f"/task/{task_id}") for task_id in task_ids]
        table = get(
            "/tasks/datatable",
            **{
                "draw": "1",
                "start": "0",
                "length": "1000",
                "search[value]": "",
                "order[0][column]": "0",
                "order[0][dir]": "asc",
                "columns[0][data]": "name",
            },
        )
        workers = get("/api/workers")
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        return "\n".join([listing.text, *infos, *pages, table, workers, metrics])

    return wait_for(seen, timeout=30, message="Flower to list every task")
