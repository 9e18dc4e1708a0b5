"""A host whose clock is wrong: a Python process where ``time.time`` runs ``skew`` seconds off.

Issue 14, finding 6: every host stamped leases and due times by its own clock. The
process patches ``time.time`` before it imports the package, so whatever the ledger
reads of the host's clock (a default argument bound at import included) is skewed,
as on a host whose NTP failed; Redis's ``TIME`` is untouched. It runs one ledger call,
built as the worker builds it, and prints the answer as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import json, sys, time
skew = float(sys.argv[1])
real = time.time
time.time = lambda: real() + skew
import redis
from worker.adapters.store.ledger import Ledger
ledger = Ledger(
    redis.Redis.from_url(sys.argv[2]),
    stream=sys.argv[3],
    event_retention_seconds=3600,
    retention_seconds=600,
    lease_seconds=float(sys.argv[4]),
)
call, imp_uid, task_id = sys.argv[5], sys.argv[6], sys.argv[7]
payload = {"imp_uid": imp_uid, "identifier_sealed": "gAAAA"}
if call == "claim":
    print(json.dumps(ledger.claim(imp_uid, task_id=task_id, payload=payload).kind.value))
elif call == "receive":
    print(json.dumps(ledger.receive(imp_uid, task_id=task_id, payload=payload, resend_after=60)))
"""


def on_skewed_host(
    url: str,
    *,
    skew: float,
    call: str,
    imp_uid: str,
    task_id: str,
    stream: str = "test.skewed.events",
    lease_seconds: float = 30,
) -> Any:
    """``call`` (``claim`` or ``receive``) from a host whose clock is ``skew`` seconds off."""
    arguments = [str(skew), url, stream, str(lease_seconds), call, imp_uid, task_id]
    done = subprocess.run(
        [sys.executable, "-c", _PROGRAM, *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
