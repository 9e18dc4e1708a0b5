"""Fault selection without a server: step parsing, script order, rate draws."""

from __future__ import annotations

from typing import Any

import pytest
from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.faults import RATE_KINDS, FaultPlan, parse_rate_flag, parse_step
from iamport_sandbox.keys import Key, external, payment, portone


@pytest.mark.parametrize(
    "raw",
    [
        "latency",
        {"kind": "explode"},
        {"kind": "status", "status": 404},
        {"kind": "latency", "ms": -1},
        {"kind": "hang", "seconds": "long"},
        {"kind": "status", "method": "PATCH"},
        {"kind": "status", "endpoint": "tokens"},
        {"kind": "reject", "method": "GET"},
        {"kind": "reject", "message": ""},
        {"kind": "rate_limit", "retry_after": -1},
        {"kind": "status", "extra": 1},
    ],
)
def test_bad_steps_are_refused(raw: Any) -> None:
    """Every malformed step is an InvalidInput with a message, never a crash."""
    with pytest.raises(InvalidInput, match=r"\w"):
        parse_step(raw)


def test_reject_of_a_v2_cancel_names_its_endpoint() -> None:
    """V2 cancels with a POST, so a reject for it says endpoint `cancel`, and carries a pg_code."""
    step = parse_step({"kind": "reject", "endpoint": "cancel", "pg_code": "C01"})
    assert (step.method, step.endpoint, step.pg_code) == ("POST", "cancel", "C01")
    assert step.matches("POST", "cancel")
    assert not step.matches("POST", "receipts")
    with pytest.raises(InvalidInput):
        parse_step({"kind": "reject", "endpoint": "cancel", "method": "GET"})
    with pytest.raises(InvalidInput):
        parse_step({"kind": "reject", "pg_code": ""})


def test_reject_defaults_to_issuing() -> None:
    """A reject step with no filter applies to POST /receipts only."""
    step = parse_step({"kind": "reject", "message": "거절"})
    assert (step.method, step.endpoint) == ("POST", "receipts")
    assert step.matches("POST", "receipts")
    assert not step.matches("GET", "receipts")


def test_script_is_consumed_in_order_by_matching_requests() -> None:
    """A step waits for a request it matches; others pass it by."""
    plan = FaultPlan()
    plan.append(
        payment("imp_1"),
        [
            parse_step({"kind": "status", "status": 503, "method": "POST"}),
            parse_step({"kind": "drop_after"}),
        ],
    )
    first = plan.pick(payment("imp_1"), "GET", "payments")
    assert first is not None
    assert first.kind == "drop_after"
    second = plan.pick(payment("imp_1"), "POST", "receipts")
    assert second is not None
    assert second.status == 503
    assert plan.pick(payment("imp_1"), "POST", "receipts") is None
    assert plan.pick(payment("imp_2"), "POST", "receipts") is None
    assert plan.scripts == {}


@pytest.mark.parametrize(
    ("scripted", "other"),
    [
        (payment("x"), external("x")),
        (external("x"), payment("x")),
        (payment("external:x"), external("x")),
        (external("x"), payment("iamport-external:x")),
        (portone("x"), payment("x")),
        (portone("x"), external("x")),
        (payment("x"), portone("x")),
    ],
)
def test_scripts_of_different_kinds_never_share_a_key(scripted: Key, other: Key) -> None:
    """A step scripted for one kind of id is never consumed by the other, whatever the ids."""
    plan = FaultPlan()
    plan.append(scripted, [parse_step({"kind": "status", "status": 503})])
    assert plan.pick(other, "POST", "receipts") is None
    step = plan.pick(scripted, "POST", "receipts")
    assert step is not None
    assert step.status == 503


@pytest.mark.parametrize("name", RATE_KINDS)
def test_rate_one_always_fires(name: str) -> None:
    """A rate of 1 picks its fault on every eligible request."""
    plan = FaultPlan(seed=1)
    plan.configure({"rates": {name: 1.0}})
    step = plan.pick(payment("imp_1"), "POST", "receipts")
    assert step is not None
    expected = "status" if name.startswith("status_") else name
    assert step.kind == expected


def test_reject_rate_spares_lookups() -> None:
    """A PG rejection is drawn only for issuing."""
    plan = FaultPlan(seed=1)
    plan.configure({"rates": {"reject": 1.0}})
    assert plan.pick(payment("imp_1"), "GET", "receipts") is None
    assert plan.pick(payment("imp_1"), "GET", "payments") is None


def test_rates_are_reproducible_with_a_seed() -> None:
    """The same seed gives the same sequence of faults."""

    def draws() -> list[str | None]:
        plan = FaultPlan(seed=42)
        plan.configure({"rates": {"status_503": 0.3, "drop_after": 0.3}})
        return [
            getattr(plan.pick(payment(f"imp_{i}"), "POST", "receipts"), "kind", None)
            for i in range(50)
        ]

    first = draws()
    assert first == draws()
    assert {"status", "drop_after", None} == set(first)


def test_scripted_step_wins_over_rates() -> None:
    """A test that scripts an imp_uid is not disturbed by rates."""
    plan = FaultPlan(seed=1)
    plan.configure({"rates": {"status_503": 1.0}})
    plan.append(payment("imp_1"), [parse_step({"kind": "latency", "ms": 5})])
    step = plan.pick(payment("imp_1"), "GET", "payments")
    assert step is not None
    assert step.kind == "latency"


def test_delay_adds_global_jitter_and_scripted_latency() -> None:
    """Delay = latency_ms + uniform(0, jitter) + a latency step's ms."""
    plan = FaultPlan(seed=3)
    plan.configure({"latency_ms": 10, "latency_jitter_ms": 5})
    for _ in range(20):
        assert 0.010 <= plan.delay_seconds(None) <= 0.015
    step = parse_step({"kind": "latency", "ms": 100})
    assert 0.110 <= plan.delay_seconds(step) <= 0.115


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"rates": {"status_404": 0.5}},
        {"rates": {"hang": 1.5}},
        {"rates": {"hang": True}},
        {"latency_ms": -1},
        {"seed": "x"},
        {"speed": 1},
    ],
)
def test_bad_configuration_changes_nothing(body: Any) -> None:
    """A refused PUT leaves the plan as it was."""
    plan = FaultPlan()
    plan.configure({"rates": {"status_502": 0.5}, "latency_ms": 3})
    before = plan.to_json()
    with pytest.raises(InvalidInput):
        plan.configure(body)
    assert plan.to_json() == before


@pytest.mark.parametrize(
    ("flag", "parsed"),
    [("status_503=1.0", ("status_503", 1.0)), ("hang=0", ("hang", 0.0))],
)
def test_rate_flag(flag: str, parsed: tuple[str, float]) -> None:
    """--fault-rate KIND=RATE."""
    assert parse_rate_flag(flag) == parsed


@pytest.mark.parametrize("flag", ["status_503", "status_503=x", "nope=0.5", "hang=2"])
def test_bad_rate_flag(flag: str) -> None:
    """A malformed --fault-rate is refused with a reason."""
    with pytest.raises(InvalidInput):
        parse_rate_flag(flag)
