"""No attempt makes more provider calls than the time rule counts on (issue 14, finding 16).

Counted at the in-memory provider, attempt by attempt, over refunds and issues that meet
the faults that make an attempt longest: a lost answer (a lookup pair follows it), a 400
(a lookup follows it), a PG whose receipts cannot be looked up (a payment read follows
every lookup).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from itertools import pairwise

import pytest

from tests.support.memory import LOST, MemoryProvider
from tests.support.runners import World
from tests.unit.core.test_runner_refunds import NoLookupProvider
from worker.config import timing
from worker.core.errors import InvalidRequest
from worker.core.outcome import Outcome
from worker.core.runner import Done, Failed, JobRunner

#: The bound, as the time rule (worker/config/timing.py) counts it.
BOUND = timing.MAX_HTTP_REQUESTS_PER_ATTEMPT // timing.HTTP_REQUESTS_PER_CALL


def calls_per_attempt(world: World, make: Callable[..., JobRunner]) -> tuple[list[int], object]:
    """Deliver a task's messages; how many calls each attempt made, and how it ended."""
    marks: list[int] = []

    def counted(**kwargs: object) -> JobRunner:
        marks.append(len(world.provider.calls))
        return make(**kwargs)

    delivery = world.deliver(counted)
    marks.append(len(world.provider.calls))
    return [after - before for before, after in pairwise(marks)], delivery.last


@pytest.mark.parametrize("lookup", [True, False], ids=["lookup", "no-lookup"])
@pytest.mark.parametrize(
    "faults",
    [
        {},
        {"POST": [LOST]},
        {"DELETE": [LOST]},
        {"POST": [InvalidRequest("issued already", status=400, code=-1)]},
    ],
    ids=["clean", "post-lost", "delete-lost", "post-400"],
)
@pytest.mark.parametrize("amount", [None, 300], ids=["full", "partial"])
def test_no_refund_attempt_passes_the_bound(
    lookup: bool, faults: dict[str, list[object]], amount: int | None
) -> None:
    world = World(provider=MemoryProvider if lookup else NoLookupProvider)
    world.provider.pay("imp_1")
    assert world.issue_runner("t1").run() == Done(Outcome.ISSUED)
    world.provider.refund("imp_1", amount or 1000)
    for method, found in faults.items():
        world.provider.fail_next(method, *found)  # type: ignore[arg-type]
    counts, end = calls_per_attempt(world, partial(world.cancel_runner, "c1", amount=amount))
    assert max(counts) <= BOUND, counts
    assert isinstance(end, Done | Failed), end
    if not faults:
        assert len(world.provider.active("imp_1")) == (1 if amount else 0)


@pytest.mark.parametrize("fault", [LOST, InvalidRequest("x", status=400, code=-1)])
def test_no_issue_attempt_passes_the_bound(fault: object) -> None:
    world = World(provider=NoLookupProvider)
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", fault)  # type: ignore[arg-type]
    counts, _ = calls_per_attempt(world, partial(world.issue_runner, "t1"))
    assert max(counts) <= BOUND, counts


def test_the_time_rule_counts_the_bound_the_runner_keeps() -> None:
    assert timing.MAX_HTTP_REQUESTS_PER_ATTEMPT == 5 * timing.HTTP_REQUESTS_PER_CALL
    assert timing.longest_attempt_seconds(10) == 5 * 4 * 2 * 10
