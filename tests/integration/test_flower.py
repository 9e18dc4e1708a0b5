"""Flower, started as an operator starts it, shows the worker's tasks behind basic auth."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from celery import Celery

from tests.support.commands import FLOWER, argv
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import free_port, wait_for
from tests.support.worker import ROOT, ProcessOutput, stop, worker_env

pytestmark = pytest.mark.integration
AUTH = ("ops", "s3cret-pass")


@pytest.fixture(scope="module")
def flower(
    redis_server: RedisServer,
    sandbox: Sandbox,
    worker: ProcessOutput,
    producer: Celery,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """``celery -A worker flower`` as the flower image starts it, once it receives events.

    Through the image's entrypoint: the password from a secret file
    (FLOWER_BASIC_AUTH_FILE), and the address its default, 127.0.0.1.
    """
    port = free_port()
    secret = tmp_path_factory.mktemp("flower") / "flower_basic_auth"
    secret.write_text(":".join(AUTH) + "\n", encoding="utf-8")
    env = worker_env(redis_server.url, sandbox.url, FLOWER_BASIC_AUTH_FILE=str(secret))
    process = subprocess.Popen(
        ["sh", str(ROOT / "docker" / "flower" / "entrypoint.sh"), *argv(FLOWER, f"--port={port}")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput(process)
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"flower exited:\n{output.finish()}")
        try:
            return requests.get(f"{url}/healthcheck", timeout=1).ok
        except requests.RequestException:
            return False

    def sees_events() -> bool:
        # Events are pub/sub: Flower only sees those sent after it subscribed.
        probe = producer.send_task("issue_cash_receipt", args=[{}], queue="cash_receipts")
        try:
            wait_for(lambda: str(probe.id) in tasks(url), timeout=2, message="a probe task")
        except AssertionError:
            return False
        return True

    try:
        wait_for(answers, timeout=30, message="Flower to answer")
        wait_for(sees_events, timeout=30, interval=0, message="Flower to receive task events")
        yield url
    finally:
        stop(process)


def tasks(url: str) -> dict[str, Any]:
    """Flower's task list."""
    response = requests.get(f"{url}/api/tasks", auth=AUTH, timeout=5)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def test_flower_requires_basic_auth(flower: str) -> None:
    """Without the credentials Flower's UI and API answer 401."""
    assert requests.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    assert requests.get(f"{flower}/api/tasks", auth=("ops", "wrong"), timeout=5).status_code == 401


def test_flower_is_read_only(flower: str) -> None:
    """Even with the password, Flower cannot shut down, restart or revoke anything."""
    for action in ("worker/shutdown/celery@x", "worker/pool/restart/celery@x", "task/revoke/x"):
        response = requests.post(f"{flower}/api/{action}", auth=AUTH, timeout=5)
        assert response.status_code == 403, action


def test_metrics_are_open_but_carry_no_task_data(flower: str, producer: Celery) -> None:
    """/metrics needs no password (as documented): counters by task name and worker only."""
    response = requests.get(f"{flower}/metrics", timeout=5)
    assert response.status_code == 200
    assert "flower_events_total" in response.text
    assert "identifier" not in response.text
    assert "imp_" not in response.text


def test_flower_lists_outcomes_with_run_times(
    flower: str,
    worker: ProcessOutput,
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """A retried-then-issued task and a failed one appear with their states and run times."""
    sandbox.admin.script(imp_uid, {"kind": "status", "status": 503, "method": "POST"})
    ok = producer.send_task(
        "issue_cash_receipt",
        args=[{"imp_uid": imp_uid, "identifier": "01055554321"}],
        queue="cash_receipts",
    )
    bad = producer.send_task(
        "issue_cash_receipt", args=[{"imp_uid": f"{imp_uid}_bad"}], queue="cash_receipts"
    )
    results.wait(str(ok.id))
    results.wait(str(bad.id))

    def settled() -> dict[str, Any] | None:
        seen = tasks(flower)
        both = seen.get(str(ok.id)), seen.get(str(bad.id))
        if all(task and task["state"] in {"SUCCESS", "FAILURE"} for task in both):
            return seen
        return None

    seen = wait_for(settled, timeout=20, message="Flower to see both outcomes")
    issued, failed = seen[str(ok.id)], seen[str(bad.id)]
    assert (issued["state"], failed["state"]) == ("SUCCESS", "FAILURE")
    assert issued["retries"] == 1
    assert issued["runtime"] is not None
    assert issued["received"] and issued["started"]
    assert "invalid_payload" in failed["exception"]
