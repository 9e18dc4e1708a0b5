"""The `cashreceipt` console script, run as a user runs it."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.worker import worker_env

pytestmark = pytest.mark.integration
CLI = str(Path(sys.executable).parent / "cashreceipt")
PHONE = "01055554321"


def run(
    redis_server: RedisServer, sandbox: Sandbox, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """Run ``cashreceipt`` with the test worker's settings."""
    return subprocess.run(
        [CLI, args[0], "--json", *args[1:]],
        env=worker_env(redis_server.url, sandbox.url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.usefixtures("worker")
def test_enqueue_from_json_then_status(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """`enqueue` prints the task id; `status` prints the payment's latest event."""
    enqueued = run(
        redis_server,
        sandbox,
        "enqueue",
        json.dumps({"imp_uid": imp_uid, "identifier": "010-5555-4321"}),
    )
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = json.loads(enqueued.stdout)["task_id"]
    results.wait(task_id)
    status = run(redis_server, sandbox, "status", imp_uid)
    assert status.returncode == 0
    shown = json.loads(status.stdout)
    assert (shown["event"]["type"], shown["event"]["data"]["task_id"]) == (
        "cash_receipt.issued",
        task_id,
    )
    assert (shown["ledger"]["state"], shown["ledger"]["task_id"]) == ("issued", task_id)
    assert shown["ledger"]["payload"]["identifier_sealed"] == "<sealed>"
    assert "5555" not in status.stdout


@pytest.mark.usefixtures("worker")
def test_enqueue_from_flags_and_stdin(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """Flags build a payload; `--file -` reads one from standard input."""
    by_flags = run(
        redis_server, sandbox, "enqueue", "--imp-uid", imp_uid, "--identifier", "01055554321",
        "--identifier-type", "phone", "--tax-free", "0",
    )  # fmt: skip
    assert results.wait(json.loads(by_flags.stdout)["task_id"])["type"] == "cash_receipt.issued"
    payload = json.dumps({"imp_uid": f"{imp_uid}_2", "identifier": "01055554321"})
    by_stdin = run(redis_server, sandbox, "enqueue", "--file", "-", stdin=payload)
    assert results.wait(json.loads(by_stdin.stdout)["task_id"])["type"] == "cash_receipt.issued"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["enqueue", '{"imp_uid": "x", "identifier": "010-5555"}'], "identifier"),
        (["enqueue", "not json"], "_payload"),
        (["enqueue", "[1]"], "_payload"),
        (["enqueue", "--identifier", "01055554321"], "imp_uid"),
    ],
)
def test_bad_input_exits_2_with_field_errors(
    redis_server: RedisServer, sandbox: Sandbox, args: list[str], field: str
) -> None:
    """Bad input is refused before anything is enqueued, naming the field, not echoing it."""
    result = run(redis_server, sandbox, *args)
    assert result.returncode == 2
    assert field in json.loads(result.stderr)["fields"]
    assert "5555" not in result.stderr


def test_status_of_an_unknown_payment(redis_server: RedisServer, sandbox: Sandbox) -> None:
    """No event for the payment: exit 1 and say so."""
    result = run(redis_server, sandbox, "status", "imp_never_seen")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == "unknown"


def plain(env: dict[str, str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``cashreceipt`` as given (no --json added), with ``env``."""
    return subprocess.run(
        [CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "args",
    [["status", "imp_1"], ["dead"], ["stuck"], ["tail", "--count", "1"], ["enqueue", "--json",
     '{"imp_uid": "imp_1", "identifier": "01055554321"}']],
)  # fmt: skip
def test_unreachable_redis_is_one_line_exit_3(
    redis_server: RedisServer, sandbox: Sandbox, args: list[str]
) -> None:
    """No traceback: one line naming Redis, its URL's password redacted; 3 means try again."""
    unreachable = "redis://:s3cret-pass@127.0.0.1:9/0"  # the discard port: nothing listens
    result = plain(worker_env(unreachable, sandbox.url), *args)
    assert result.returncode == 3, result.stderr
    assert result.stderr.startswith("cashreceipt: Redis at redis://:**@127.0.0.1:9/0: ")
    assert len(result.stderr.splitlines()) == 1
    assert "s3cret" not in result.stderr + result.stdout


def test_enqueue_without_a_pii_key_is_one_line_exit_2(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    """No key to seal with: a configuration error in one line, nothing enqueued."""
    env = worker_env(redis_server.url, sandbox.url, PII_ENCRYPTION_KEYS="")
    result = plain(env, "enqueue", '{"imp_uid": "imp_nokey", "identifier": "01055554321"}')
    assert result.returncode == 2
    assert result.stderr.startswith("cashreceipt: configuration error: no PII encryption key")
    assert len(result.stderr.splitlines()) == 1
    assert "5554321" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["dead", "--reason", "no_such_reason"], ["stuck", "--older-than", "1e9"]],
)
def test_nothing_found_exits_1(
    redis_server: RedisServer, sandbox: Sandbox, args: list[str]
) -> None:
    """dead and stuck with nothing to list: exit 1, as the README says, and no output."""
    result = run(redis_server, sandbox, *args)
    assert (result.returncode, result.stdout) == (1, "")


@pytest.mark.usefixtures("worker")
def test_status_json_is_one_line_and_colour_follows_no_color(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """--json is one JSON line; on a terminal the text has colour, unless NO_COLOR is set."""
    enqueued = run(
        redis_server, sandbox, "enqueue", json.dumps({"imp_uid": imp_uid, "identifier": PHONE})
    )
    results.wait(json.loads(enqueued.stdout)["task_id"])
    status = run(redis_server, sandbox, "status", imp_uid)
    assert len(status.stdout.splitlines()) == 1
    assert json.loads(status.stdout)["ledger"]["state"] == "issued"

    env = worker_env(redis_server.url, sandbox.url)
    assert "\x1b[" in on_terminal(env, "status", imp_uid)
    assert "\x1b[" not in on_terminal({**env, "NO_COLOR": "1"}, "status", imp_uid)
    assert "\x1b[" not in plain(env, "status", imp_uid).stdout  # not a terminal


def on_terminal(
    env: dict[str, str], *args: str, prompt: bytes = b"", answer: bytes = b"", expect: int = 0
) -> str:
    """What ``cashreceipt`` prints on a (pseudo-)terminal; ``answer`` is typed after ``prompt``."""
    leader, follower = pty.openpty()
    chunks: list[bytes] = []
    try:
        process = subprocess.Popen(
            [CLI, *args], env=env, stdin=follower, stdout=follower, stderr=follower
        )
        os.close(follower)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if answer and prompt in b"".join(chunks):
                # Typed only once asked: turning echo off flushes what came before.
                os.write(leader, answer)
                answer = b""
            if not select.select([leader], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=10) == expect, b"".join(chunks)
    finally:
        os.close(leader)
    return b"".join(chunks).decode()


def test_replay_asks_for_the_identifier_hidden_on_a_terminal(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    """On a terminal --identifier-stdin prompts, and what is typed is not echoed."""
    env = worker_env(redis_server.url, sandbox.url)
    shown = on_terminal(
        env,
        "replay",
        "imp_never_failed",
        "--identifier-stdin",
        prompt=b"Corrected identifier",
        answer=b"01055554321\n",
        expect=1,
    )
    assert "Corrected identifier" in shown
    assert "skipped" in shown  # it was read, and the replay went on (nothing to replay)
    assert "5554321" not in shown


def test_replay_identifier_stdin_needs_an_identifier(
    redis_server: RedisServer, sandbox: Sandbox
) -> None:
    """An empty standard input is bad input, said before anything is looked up."""
    result = run(redis_server, sandbox, "replay", "imp_1", "--identifier-stdin", stdin="")
    assert result.returncode == 2
    assert "read no identifier" in result.stderr


@pytest.mark.parametrize("args", [[], ["ingress"], ["status"], ["bench"]])
def test_version_needs_no_settings(args: list[str]) -> None:
    """The console script prints its version and exits 0 even with a setting it would refuse,
    and before a required argument (``status IMP_UID``) is missed."""
    env = {**os.environ, "INGRESS_CLAIM_IDLE": "soon"}
    result = plain(env, *args, "--version")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"cashreceipt {version('cashreceipt')}\n"
