"""The benchmark's arithmetic: percentiles, medians of repeats, the targets' verdicts."""

from __future__ import annotations

import pytest
from cashreceipt_bench.run import Options, parse_env, percentile, render, summarize


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7


def _drain(kind: str, rate: float, cpu: float, repeat: int) -> dict[str, object]:
    return {
        "profile": "throughput",
        "kind": kind,
        "latency_ms": 0,
        "n": 100,
        "processes": 1,
        "receipts_per_s": rate,
        "cpu_ms_per_receipt": cpu,
        "rss_mb": 70.0,
        "repeat": repeat,
    }


def test_repeats_become_medians_and_the_verdicts_follow_them() -> None:
    rows = [
        _drain("ours", 100.0, 3.0, 0),
        _drain("ours", 300.0, 3.0, 1),
        _drain("ours", 200.0, 3.0, 2),
        _drain("bare", 250.0, 2.5, 0),
        _drain("bare", 250.0, 2.5, 1),
        _drain("prefork", 150.0, 2.0, 0),
    ]
    summary = summarize(rows)
    ours = next(r for r in summary if r["kind"] == "ours")
    assert ours["receipts_per_s"] == 200
    assert ours["repeats"] == 3
    text = render(summary, Options(latencies=(0,)))
    assert "met    L=0: throughput ours/bare 0.80 >= 0.70" in text
    assert "met    L=0: CPU ours/bare 1.20 <= 1.5" in text


def test_latencies_of_repeats_are_pooled() -> None:
    base = {"profile": "latency", "kind": "ours", "latency_ms": 50, "rate_per_s": 10.0}
    rows = [
        {**base, "latencies_ms": [51.0] * 99 + [200.0], "p50_ms": 51.0, "repeat": 0},
        {**base, "latencies_ms": [52.0] * 100, "p50_ms": 52.0, "repeat": 1},
    ]
    (pooled,) = summarize(rows)
    assert pooled["n"] == 200
    assert pooled["p50_ms"] == 52  # the 100th of 99 x 51, 100 x 52, 200
    assert pooled["max_ms"] == 200
    text = render([pooled], Options(latencies=(50,)))
    assert "met    L=50: p50 52.0 <= 65, p99 52.0 <= 110 ms" in text


def test_env_pairs() -> None:
    assert parse_env(["WORKER_CONCURRENCY=64", "A=b=c"]) == {"WORKER_CONCURRENCY": "64", "A": "b=c"}
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_env(["WORKER_CONCURRENCY"])
