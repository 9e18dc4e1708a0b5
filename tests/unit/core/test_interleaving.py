"""Two runners on one payment, interleaved one port call at a time (tests/support/stepping.py).

Each runner is a task's messages (tests/support/runners.py: ``World.deliver``) in a
thread of its own; every store, provider and event call waits at a gate until the
test lets it through, so a schedule replays exactly, and hypothesis shrinks one.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.runners import World
from tests.support.stepping import Stepper
from worker.core.outcome import Outcome
from worker.core.runner import Done


def two_confirmations(stepper: Stepper) -> World:
    """Two issue messages (tasks a and b) for one payment, each at its first gate."""
    world = World(stepper=stepper)
    world.provider.pay("imp_1")
    stepper.start("a", lambda: world.deliver(lambda **kw: world.issue_runner("a", **kw)))
    stepper.start("b", lambda: world.deliver(lambda **kw: world.issue_runner("b", **kw)))
    return world


def outcome(stepper: Stepper, name: str) -> Outcome:
    last = stepper.result(name).last
    assert isinstance(last, Done), last
    return last.outcome


def test_a_duplicate_waits_for_the_owner_and_ends_with_its_receipt() -> None:
    with Stepper() as stepper:
        world = two_confirmations(stepper)
        assert {name: str(call) for name, call in stepper.waiting().items()} == {
            "a": "a: store.claim",
            "b": "b: store.claim",
        }
        stepper.step("a")  # a owns the job
        stepper.step("b")  # b finds it busy, and waits on it (a waiter of the job)
        stepper.drain()
        # a's finish published b's event too; b's next look finds its task done.
        assert (outcome(stepper, "a"), outcome(stepper, "b")) == (Outcome.ISSUED, Outcome.DONE)
    assert world.provider.sent("POST") == 1
    [a_event], [b_event] = world.store.events_of("a"), world.store.events_of("b")
    assert (a_event.data["duplicate"], b_event.data["duplicate"]) == (False, True)
    assert a_event.data["receipt"] == b_event.data["receipt"]


def test_a_takeover_fences_out_the_owner_before_its_post() -> None:
    """a's lease passes while it is about to POST; b takes the job over. a's send is
    recorded under its old fence, which the store refuses: a never POSTs, b does once,
    and a's task still ends in one event, the receipt b issued (a waiter of the job)."""
    with Stepper() as stepper:
        world = two_confirmations(stepper)
        stepper.step("a")  # a claims (fence 1)
        while str(stepper.waiting()["a"]) != "a: provider.issue_receipt":
            stepper.step("a")
        stepper.step("a")  # into the POST: it records its send time first ...
        assert str(stepper.waiting()["a"]) == "a: store.now"
        world.clock.advance(31)  # ... but a's lease (30 s) passed meanwhile
        stepper.step("b")  # b's claim takes the job over (fence 2)
        stepper.drain()
        assert (outcome(stepper, "a"), outcome(stepper, "b")) == (Outcome.DONE, Outcome.ISSUED)
    assert world.provider.sent("POST") == 1
    assert {call.operation.generation for call in world.provider.calls if call.operation} == {2}
    [a_event] = world.store.events_of("a")
    assert (a_event.type, a_event.data["duplicate"]) == ("cash_receipt.issued", True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "tick"]), max_size=40))
def test_any_schedule_issues_one_receipt_and_one_event_per_task(schedule: list[str]) -> None:
    """Whatever the order of the two runners' calls, and wherever the clock jumps past a
    lease (``tick``: 20 s), the payment gets one receipt from one POST, and each task
    one event."""
    with Stepper() as stepper:
        world = two_confirmations(stepper)
        for name in schedule:
            if name == "tick":
                world.clock.advance(20)
            else:
                stepper.play([name])
        stepper.drain()
        outcomes = {outcome(stepper, "a"), outcome(stepper, "b")}
    assert world.provider.sent("POST") == 1
    assert len(world.provider.receipts("imp_1")) == 1
    assert [len(world.store.events_of(task)) for task in "ab"] == [1, 1]
    assert Outcome.ISSUED in outcomes
