"""Redis's clock is the ledger's, and only a test moves it (issue 14, finding 6).

These read the source tree, as a reviewer would: the modules that stamp or compare
leases, due times, stream MINIDs and the oldest-due gauge read no host clock, and
nothing of the runtime builds or passes a clock offset (no setting reaches it).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
STORE = ROOT / "worker" / "adapters" / "store"

#: The modules whose times end up in, or are compared with, the ledger's.
ON_REDIS_TIME = [
    STORE / "ledger.py",
    STORE / "events.py",
    STORE / "views.py",
    STORE / "sweeper.py",
    STORE / "clock.py",
    ROOT / "worker" / "adapters" / "observe" / "metrics.py",
]
_HOST_CLOCKS = {("time", "time"), ("time", "time_ns"), ("datetime", "now"), ("datetime", "utcnow")}


def test_the_ledger_reads_no_host_clock() -> None:
    found = [
        f"{path.name}:{node.lineno} {node.value.id}.{node.attr}"
        for path in ON_REDIS_TIME
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and (node.value.id, node.attr) in _HOST_CLOCKS
    ]
    assert found == []


def test_no_script_takes_its_time_from_the_caller() -> None:
    """A script's time is ``now_ms``: Redis's TIME plus the offset, never a caller's now."""
    lua = STORE / "lua"
    found = [
        f"{path.name}: {line.strip()}"
        for path in sorted(lua.glob("*.lua"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if not line.startswith("-- needs:") and re.search(r"\bnow_ms\b(?!\.lua|\()|\bminid\b", line)
    ]
    assert found == []
    assert "redis.call('TIME')" in (lua / "now_ms.lua").read_text(encoding="utf-8")


def test_only_tests_move_the_clock() -> None:
    """No runtime module builds a ClockOffset or hands one on: production runs on TIME alone."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted([*ROOT.glob("worker/**/*.py"), *ROOT.glob("tasks/**/*.py")])
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"ClockOffset\(|clock_offset=", line) and path.name != "clock.py"
    ]
    assert found == []
