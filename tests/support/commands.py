"""The start commands of every service, as docker/docker-compose.yml runs them.

Tests start their processes with these (the console scripts of this
environment, the same arguments), and ``tests/unit/test_compose.py`` checks
that the compose file's commands are these, so that what is tested is what
runs in production.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Where this environment's console scripts are (celery, cashreceipt, iamport-sandbox).
BIN = Path(sys.executable).parent

WORKER = ("celery", "-A", "worker", "worker", "--loglevel", "INFO")
#: Read-only: Flower can look, not revoke or shut workers down. Basic auth from FLOWER_BASIC_AUTH.
FLOWER = ("celery", "-A", "worker", "flower", "--read_only=true")
INGRESS = ("cashreceipt", "ingress")
SANDBOX = ("iamport-sandbox",)


def argv(command: tuple[str, ...], *extra: str) -> list[str]:
    """``command`` with its program taken from this environment, then ``extra``."""
    return [str(BIN / command[0]), *command[1:], *extra]


def run_cashreceipt(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``cashreceipt <args>`` with ``env`` (and ``stdin``), its output captured, within a
    minute."""
    return subprocess.run(
        argv(("cashreceipt",), *args),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
