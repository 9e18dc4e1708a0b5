"""The ingress as real processes (``cashreceipt ingress``, as compose runs it), and producing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from tests.support.commands import INGRESS as INGRESS_COMMAND
from tests.support.commands import argv
from tests.support.wait import wait_for
from tests.support.worker import ROOT, ProcessOutput, stop

#: ``cashreceipt ingress``, as compose starts it.
INGRESS = argv(INGRESS_COMMAND)


def run_once(env: Mapping[str, str], *extra: str, timeout: float = 30) -> tuple[int, str]:
    """``--once``: handle what is in the stream and exit; returns the exit code and the log."""
    result = subprocess.run(
        [*INGRESS, "--once", *extra],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@contextmanager
def running_ingress(
    env: Mapping[str, str], *extra: str, ready: str = "ingress ready"
) -> Iterator[tuple[subprocess.Popen[str], ProcessOutput]]:
    """A long-running ingress, once it has logged ``ready``; SIGTERM at the end."""
    process = subprocess.Popen(
        [*INGRESS, *extra],
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = ProcessOutput(process)
    try:
        wait_for(
            lambda: ready in output.text or process.poll() is not None,
            timeout=20,
            message=f"the ingress to log {ready!r}",
        )
        if process.poll() is not None:
            raise AssertionError(f"ingress exited at start:\n{output.finish()}")
        yield process, output
    finally:
        stop(process)
        output.finish()  # all of it, for assertions after the `with`


def xadd(client: redis.Redis, stream: str, event_type: str, data: Any) -> str:
    """What a producer does: one entry, ``type`` and ``data`` (JSON unless already text/bytes)."""
    text = data if isinstance(data, str | bytes) else json.dumps(data)
    return str(client.xadd(stream, {"type": event_type, "data": text}))


def blocked_reader(client: redis.Redis, consumer: str) -> bool:
    """Whether the ingress named ``consumer`` is waiting inside XREADGROUP right now."""
    name = f"cashreceipt-ingress:{consumer}"
    return any(
        entry.get("name") == name and entry.get("cmd") == "xreadgroup" and "b" in entry["flags"]
        for entry in client.client_list()
    )
