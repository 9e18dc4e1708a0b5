"""The README's benchmark command runs end to end and prints its tables.

Not a timed test: the figures are not checked against anything, only that
every kind of worker ran, every event came back, and the table says so. Speed
is measured by the command itself (README, Performance).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CLI = Path(sys.executable).parent / "cashreceipt"
#: Tiny sizes after the README's own arguments: click keeps the last value of an option.
TINY = ("-n", "20", "--latency", "0", "--light-n", "10", "--repeat", "1", "--no-progress")


def readme_bench_command() -> list[str]:
    """The command under ``<!-- bench-command -->`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- bench-command -->\n```sh\n(.*?)\n", text)
    assert found, "README has no bench-command block"
    words = shlex.split(found.group(1), comments=True)
    assert words[:2] == ["cashreceipt", "bench"], words
    return words


def run_bench(*arguments: str, json_path: Path) -> str:
    """``cashreceipt bench`` with these arguments, tiny; its stdout, once it exited 0."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "IAMPORT_", "PORTONE_", "PROVIDERS"))
    }
    finished = subprocess.run(
        [str(CLI), *arguments, *TINY, "--json", str(json_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=580,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return finished.stdout


@pytest.mark.timeout(600)
def test_readme_bench_command_prints_its_tables(tmp_path: Path) -> None:
    """Every kind of worker drains, the light-load run times each event, the JSON agrees."""
    words = readme_bench_command()
    json_path = tmp_path / "bench.json"
    out = run_bench(*words[1:], json_path=json_path)
    assert "Throughput" in out
    assert "Latency at light load" in out
    assert re.search(r"^\s+0\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+", out, re.MULTILINE), out
    assert "Targets" in out

    document = json.loads(json_path.read_text(encoding="utf-8"))
    summary = {(row["profile"], row["kind"]): row for row in document["summary"]}
    assert set(summary) == {
        ("throughput", "ours"),
        ("throughput", "bare"),
        ("throughput", "prefork"),
        ("latency", "ours"),
        ("latency", "bare"),
    }
    for key in (("throughput", "ours"), ("throughput", "bare"), ("throughput", "prefork")):
        row = summary[key]
        assert row["n"] == 20
        assert row["receipts_per_s"] > 0
        assert row["cpu_ms_per_receipt"] > 0
        assert row["rss_mb"] > 10
    for key in (("latency", "ours"), ("latency", "bare")):
        row = summary[key]
        assert len(row["latencies_ms"]) == 10
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert document["machine"]["cpus"] == os.cpu_count()


@pytest.mark.timeout(600)
def test_portone_v2_receipts_are_measured_with_the_same_calls_on_both_sides(
    tmp_path: Path,
) -> None:
    """--provider portone: ours and bare each issue every V2 payment with its GET and its
    POST, as the sandbox logged them, and the V2 tables are printed."""
    json_path = tmp_path / "bench.json"
    out = run_bench("bench", "--provider", "portone", json_path=json_path)
    assert "Throughput, PortOne V2 payments" in out
    assert "Latency at light load, PortOne V2 payments" in out
    assert "L=0 V2: throughput ours/bare" in out

    document = json.loads(json_path.read_text(encoding="utf-8"))
    summary = {(row["profile"], row["kind"], row["provider"]): row for row in document["summary"]}
    assert set(summary) == {
        ("throughput", "ours", "portone"),
        ("throughput", "bare", "portone"),
        ("latency", "ours", "portone"),
        ("latency", "bare", "portone"),
    }
    for kind in ("ours", "bare"):
        row = summary["throughput", kind, "portone"]
        assert row["receipts_per_s"] > 0
        assert row["calls"] == {"GET /portone/payments/{id}": 20, "POST /portone/cash-receipts": 20}
        assert len(summary["latency", kind, "portone"]["latencies_ms"]) == 10
