"""`make run` with no Redis: a private, persisting redis-server, stopped with the rest."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.support.demo import stop_demo
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput
from worker.demo_redis import NoRedis, free_port, plan_redis

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PATH = f"{BIN}:/usr/bin:/bin"


def _pid_on(port: int) -> int | None:
    """The pid of the process listening on 127.0.0.1:port, read from /proc."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            inodes.add(fields[9])
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes:
                return int(fd.parent.parent.name)
        except OSError:
            continue
    return None


#: The demo as a shell without job control starts a background job (`make run &`, a CI
#: script): with SIGINT ignored, which exec keeps. The demo then hung on Ctrl-C.
IGNORING_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def _ctrl_c(demo: subprocess.Popen[str]) -> None:
    # The terminal signals the foreground process group (Redis has its own).
    os.killpg(demo.pid, signal.SIGINT)


@pytest.mark.parametrize(
    ("launcher", "stop", "exit_code"),
    [
        ([], _ctrl_c, 0),
        (IGNORING_SIGINT, _ctrl_c, 0),
        # kill, or a supervisor's stop: the demo alone.
        ([], lambda demo: demo.send_signal(signal.SIGTERM), 128 + signal.SIGTERM),
    ],
    ids=["ctrl-c", "ctrl-c-started-in-background", "sigterm"],
)
def test_make_run_starts_a_private_append_only_redis_and_stops_it(
    tmp_path: Path,
    launcher: list[str],
    stop: Callable[[subprocess.Popen[str]], None],
    exit_code: int,
) -> None:
    port = free_port()
    demo = subprocess.Popen(
        [
            *(launcher or [sys.executable]),
            "-m",
            "worker.demo",
            "--flower-port",
            "0",
            "--run-dir",
            tmp_path,
        ],
        cwd=ROOT,
        env={"PATH": PATH, "REDIS_URL": f"redis://localhost:{port}/0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Its own process group, as a terminal's foreground job is: Ctrl-C signals the group.
        start_new_session=True,
    )
    server: int | None = None
    try:
        output = ProcessOutput(demo)
        wait_for(lambda: "keep running" in output.text, timeout=90, message="the demo's results")
        # Three payments, and a sale at a counter through V1 and through V2.
        assert output.text.count(" ISSUED ") == 5, output.text
        # REDIS_URL's own port, since it was free.
        assert f"Redis             redis://127.0.0.1:{port}/0  (started: none at" in output.text
        assert "sandbox and the Redis it started keep running" in output.text
        client = redis.Redis(port=port, decode_responses=True)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("dir") == {"dir": str(tmp_path / "redis")}
        assert client.xlen("cash_receipt.events") >= 4
        server = _pid_on(port)
        assert server is not None
        assert Path(f"/proc/{server}/exe").resolve().name.startswith("redis-")

        stop(demo)
        # The children get 5 s of soft shutdown + 15 s together, then Redis 15 s.
        try:
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo did not exit within 60 s:\n{output.text}")
        assert code == exit_code, output.text
        wait_for(lambda: not Path(f"/proc/{server}").exists(), timeout=30, message="Redis to exit")
        assert _pid_on(port) is None
        assert any((tmp_path / "redis" / "appendonlydir").iterdir())
    finally:
        stop_demo(demo)
        if server is not None and Path(f"/proc/{server}").exists():
            os.kill(server, signal.SIGKILL)  # what a failed run left behind


def test_make_run_without_redis_server_on_path_says_how_to_get_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker.demo", "--once", "--run-dir", tmp_path],
        cwd=ROOT,
        env={"PATH": str(tmp_path), "REDIS_URL": f"redis://localhost:{free_port()}/0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == ""
    (line,) = result.stdout.splitlines()
    assert "no redis-server on PATH to start one: install it (apt-get install redis-server" in line


def test_a_redis_that_persists_is_used_as_it_is(aof_redis: RedisServer, tmp_path: Path) -> None:
    plan = plan_redis(aof_redis.url, tmp_path, PATH)
    assert (plan.url, plan.command, plan.notice, plan.accept_risk) == (
        aof_redis.url,
        None,
        None,
        False,
    )


def test_a_redis_that_does_not_persist_is_used_knowingly(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """Not started by the demo and not durable: its worker is told to accept the risk."""
    plan = plan_redis(own_redis.url, tmp_path, PATH)
    assert (plan.url, plan.command, plan.accept_risk) == (own_redis.url, None, True)
    assert plan.notice is not None
    assert plan.notice.startswith(
        "REDIS_DURABILITY=accept-risk set for the worker (a Redis the demo did not start): "
        "appendonly is no (INFO aof_enabled:0)"
    )
    assert plan.notice.endswith("fine for a demo only.")


def test_a_port_held_by_something_else_gets_a_free_one(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        plan = plan_redis(f"redis://localhost:{taken}/3", tmp_path, PATH)
    assert plan.command is not None
    assert plan.url.startswith("redis://127.0.0.1:")
    assert plan.url.endswith("/3")
    assert f":{taken}/" not in plan.url


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@localhost:{port}/0",  # a password: a Redis the user means
        "rediss://localhost:{port}/0",
        "redis://192.0.2.1:{port}/0",  # not this host (TEST-NET-1: never answers)
    ],
)
def test_no_stand_in_for_a_redis_the_user_named(url: str, tmp_path: Path) -> None:
    with pytest.raises(NoRedis, match=r"Cannot reach Redis at .* Start it or fix REDIS_URL"):
        plan_redis(url.format(port=free_port()), tmp_path, PATH)
