"""The durability verdict: which answers refuse a start, which only warn (pure; the processes
are in tests/integration/test_durability.py)."""

from __future__ import annotations

import pytest
import redis

from worker.adapters.store.durability import NotDurable, judge, verdict

DURABLE = ({"aof_enabled": 1}, {"maxmemory_policy": "noeviction"})
SHOWN = "redis://u:**@h:6379/0"


def test_a_durable_redis_has_nothing_to_say() -> None:
    assert judge(*DURABLE, "always") == []
    assert verdict(judge(*DURABLE, "always"), policy="require", shown_url=SHOWN) == []


@pytest.mark.parametrize(
    ("persistence", "memory", "appendfsync", "said"),
    [
        ({"aof_enabled": 0}, DURABLE[1], "always", "appendonly is no"),
        (
            DURABLE[0],
            {"maxmemory_policy": "volatile-ttl"},
            "always",
            "maxmemory-policy is volatile",
        ),
        (DURABLE[0], DURABLE[1], "everysec", "appendfsync is everysec"),
        (DURABLE[0], DURABLE[1], "no", "appendfsync is no"),
        ({}, DURABLE[1], "always", "INFO persistence has no aof_enabled"),
        (DURABLE[0], {}, "always", "INFO memory has no maxmemory_policy"),
    ],
)
def test_what_refuses(
    persistence: dict[str, object], memory: dict[str, object], appendfsync: str, said: str
) -> None:
    found = judge(persistence, memory, appendfsync)
    with pytest.raises(NotDurable, match=said) as refusal:
        verdict(found, policy="require", shown_url=SHOWN)
    assert "REDIS_DURABILITY=accept-risk" in str(refusal.value)
    assert "\n" not in str(refusal.value)
    (warning,) = verdict(found, policy="accept-risk", shown_url=SHOWN)
    assert said in warning
    assert warning.startswith("cashreceipt: WARNING: REDIS_DURABILITY=accept-risk: ")


def test_appendfsync_that_cannot_be_read_only_warns() -> None:
    denied = redis.exceptions.NoPermissionError("this user has no permissions")
    (note,) = verdict(judge(*DURABLE, denied), policy="require", shown_url=SHOWN)
    assert "appendfsync is not checked" in note
    assert "no permissions" in note


def test_appendfsync_is_moot_without_aof() -> None:
    (finding,) = judge({"aof_enabled": 0}, DURABLE[1], "no")
    assert "appendonly is no" in finding.text


def test_accepting_the_risk_warns_even_when_nothing_is_missing() -> None:
    (warning,) = verdict([], policy="accept-risk", shown_url=SHOWN)
    assert "nothing is missing now" in warning
