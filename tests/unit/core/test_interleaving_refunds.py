"""An issue job and a refund job for one payment, interleaved one port call at a time.

The payment is confirmed (``confirm``: the producer records the issue job, then its
message is delivered) and refunded in full or in part (``refund``: the provider
refunds, the producer records the refund job, then its message is delivered). Either
message may be delivered twice (a broker's redelivery: the same task id). Hypothesis
draws the order of every store, provider and event call of the runners
(tests/support/stepping.py), where the clock jumps past a lease (``tick``), when the
provider acts on a request it left unanswered (``late``), and which requests meet a
fault. The oracles read the provider's own record of what it was sent, not its
refusals:

- never more than one active receipt, and never a POST while one is active;
- after an ambiguous request, no POST before a lookup that settles it (made once the
  provider can no longer act on that request);
- every task message ends, with one terminal event per task and step (a partial
  refund's re-issue is its second step: ``<task>:2``);
- in the end, no receipt after a full refund, one for the balance after a partial one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.memory import DEFERRED, LOST, MemoryProvider
from tests.support.runners import RULES, World
from tests.support.stepping import Stepper
from worker.core.errors import OutcomeUnknown, ProviderError, ProviderUnavailable
from worker.core.outcome import Outcome
from worker.core.runner import Done, Failed
from worker.core.schemas import load_payload
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey, Receipt

IMP_UID = "imp_1"
AMOUNT = 1000
#: How late the provider may act on a request it left unanswered: the bound the core
#: waits out (IAMPORT_SETTLE_SECONDS), less a second. The core reads the send time one
#: store call before the request leaves (it must be recorded first), and in a stepped
#: run the other runners' busy polls move the clock meanwhile (0.1 s each).
BOUND = RULES.settle_seconds - 1.0
#: A fault: no answer, and the provider never acts on the request.
DROPPED = "dropped"
#: The two tasks, and their runners: a name with a ``'`` is a redelivery of the task.
ISSUE, CANCEL = "i", "c"
RUNNERS = {ISSUE: ("i", "i'"), CANCEL: ("c", "c'")}


@dataclass
class Request:
    """A POST or DELETE as the provider received it."""

    method: str
    at: float
    #: Its place in :attr:`MemoryProvider.calls`.
    index: int
    #: The payment's active receipts when it arrived.
    active_before: int
    #: Until when it may still take effect unseen; None: answered, not ambiguous.
    unsettled_until: float | None = None


class RecordingProvider(MemoryProvider):
    """The in-memory provider, keeping what the oracles read.

    Every POST and DELETE with its time and the active receipts it met, and every
    receipt lookup with its time. A request left unanswered (:data:`DEFERRED`) is
    acted on at ``late`` or, at the latest, once the bound has passed (on the next
    call): the promise the core relies on. :data:`DROPPED` is never acted on.
    """

    late_bound = BOUND

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.requests: list[Request] = []
        #: Each receipt lookup: its place in :attr:`calls`, and its time.
        self.lookups: list[tuple[int, float]] = []
        self.most_active = 0

    def _acted(self) -> None:
        self._watch()

    def _watch(self) -> None:
        self.most_active = max(self.most_active, len(self.active(IMP_UID)))

    def find_receipt(self, imp_uid: str) -> Receipt | None:
        self.lookups.append((len(self.calls), self._clock()))
        return super().find_receipt(imp_uid)

    def _changing(self, method: str, action: Callable[[], Receipt]) -> Receipt:
        now = self._clock()
        request = Request(method, now, len(self.calls) - 1, len(self.active(IMP_UID)))
        self.requests.append(request)
        fault = self._fault(method)
        if fault in (DEFERRED, DROPPED):
            request.unsettled_until = now + BOUND
            if fault == DEFERRED:
                self._defer(action)
            raise OutcomeUnknown(f"{method}: read timeout; the outcome must be looked up")
        try:
            receipt = action()
        finally:
            self._watch()
        if fault == LOST:
            request.unsettled_until = now
            raise OutcomeUnknown(f"{method}: connection dropped; the outcome must be looked up")
        return receipt


#: The faults a POST or DELETE may meet, by name (hypothesis shows the names).
FAULTS: dict[str, Callable[[], ProviderError | str]] = {
    "lost": lambda: LOST,
    "deferred": lambda: DEFERRED,
    "dropped": lambda: DROPPED,
    "503": lambda: ProviderUnavailable("503 Service Unavailable", status=503),
}
#: How far the clock jumps at a ``tick``: past a claim's lease (30 s), so that another
#: task may take the job over from a runner stopped at any of its calls.
TICK = 31.0
#: What a schedule is made of: a runner's next call, or one of the test's moves.
MOVES = ("i", "i'", "c", "c'", "tick", "late", "confirm", "refund")


@dataclass
class Played:
    """What one schedule left behind."""

    world: World
    provider: RecordingProvider
    #: Each runner's task messages: the last instruction of each.
    ends: dict[str, object]
    refunded: int


#: The calls of a runner that has read the clock for a POST or DELETE: it records the
#: send time next, and the request leaves right after that write.
SENDING = (
    ["provider.issue_receipt", "store.now"],
    ["provider.cancel_receipt", "store.now"],
)


def sending(stepper: Stepper) -> bool:
    """Whether a runner has read the clock for a send, and not yet sent.

    The clock does not jump there: the core reads the send time before the fenced
    write that records it, so a stall between the two shortens its settling wait by
    the stall's length, beyond what the bound can cover.
    """
    calls: dict[str, list[str]] = {}
    for call in stepper.trace:
        calls.setdefault(call.runner, []).append(f"{call.port}.{call.method}")
    return any(made[-2:] in SENDING for made in calls.values())


def play(
    schedule: list[str],
    *,
    partial: bool,
    produce: bool = True,
    redeliver: frozenset[str] = frozenset(),
    faults: tuple[tuple[str, str], ...] = (),
) -> Played:
    """Play ``schedule``, then confirm and refund if it did not, then the rest round robin.

    ``produce``: each job is recorded in the store before its message is sent, as the
    Python producer does (worker/celery/producer.py); False: the message alone, as a
    producer in another language sends it.
    """
    refunded = 300 if partial else AMOUNT
    with Stepper() as stepper:
        world = World(stepper=stepper, provider=RecordingProvider)
        provider = world.provider
        assert isinstance(provider, RecordingProvider)
        provider.pay(IMP_UID, AMOUNT)
        for method, fault in faults:
            provider.fail_next(method, FAULTS[fault]())
        produced: set[str] = set()
        started: list[str] = []

        def deliver(task: str, make: Callable[..., Any]) -> None:
            copies = 2 if task in redeliver else 1
            for name in RUNNERS[task][:copies]:
                stepper.start(name, lambda: world.deliver(make))
                started.append(name)

        def confirm() -> None:
            produced.add(ISSUE)
            if produce:
                sealer = world.sealer
                message = load_payload(world.payload(IMP_UID), sealer).to_message(sealer)
                state = world.store.receive(
                    IMP_UID, task_id=ISSUE, payload=message, resend_after=3600
                )
                if state == "issued":  # the producer's duplicate event; no message
                    receipt = (world.store.raw_record(IMP_UID) or {}).get("receipt") or "{}"
                    publisher(world, ISSUE).issued_duplicate(json.loads(receipt))
                    return
            deliver(ISSUE, lambda **kw: world.issue_runner(ISSUE, **kw))

        def refund() -> None:
            produced.add(CANCEL)
            provider.refund(IMP_UID, refunded)
            amount = refunded if partial else None
            if produce:
                cancel = {"imp_uid": IMP_UID, **({"amount": amount} if partial else {})}
                world.store.receive_cancel(
                    IMP_UID, task_id=CANCEL, cancel=cancel, resend_after=3600
                )
            deliver(CANCEL, lambda **kw: world.cancel_runner(CANCEL, amount=amount, **kw))

        moves = {"confirm": (ISSUE, confirm), "refund": (CANCEL, refund)}
        for move in schedule:
            if move == "tick":
                if not sending(stepper):
                    world.clock.advance(TICK)
            elif move == "late":
                provider.act_late()
            elif move in moves:
                task, produce_it = moves[move]
                if task not in produced:
                    produce_it()
            elif move in started:
                stepper.play([move])
        for task, produce_it in moves.values():
            if task not in produced:
                produce_it()
        stepper.drain()
        ends = {name: stepper.result(name).last for name in started}
    # Whatever the provider may still act on, it has acted on by now.
    world.clock.advance(BOUND)
    provider.settle_due()
    return Played(world, provider, ends, refunded)


def publisher(world: World, task_id: str) -> TerminalPublisher:
    """What publishes ``task_id``'s event outside a runner (the producer's duplicate)."""
    return TerminalPublisher(
        events=world.store.events,
        store=world.store,
        task_id=task_id,
        attempts=0,
        job=JobKey.payment(IMP_UID),
        merchant_uid=f"m_{IMP_UID}",
    )


def check(played: Played, *, partial: bool) -> None:
    """The oracles (see the module's docstring)."""
    world, provider = played.world, played.provider
    for name, end in played.ends.items():
        assert isinstance(end, Done | Failed), f"{name}'s messages ended with {end}"
    assert provider.most_active <= 1, "two active receipts at once"
    for request in provider.requests:
        if request.method == "POST":
            assert request.active_before == 0, f"a POST at {request.at} while a receipt was active"
    for post in (r for r in provider.requests if r.method == "POST"):
        for earlier in provider.requests:
            if earlier.index >= post.index or earlier.unsettled_until is None:
                continue
            assert any(
                earlier.index < index < post.index and at >= earlier.unsettled_until
                for index, at in provider.lookups
            ), f"a POST at {post.at} without a settled lookup after the ambiguous {earlier}"
    store = world.store
    keys = set(store.markers)
    assert {ISSUE, CANCEL} <= keys <= {ISSUE, CANCEL, f"{CANCEL}:2"}, keys
    assert sorted(store.markers.values()) == sorted(e.entry_id for e in store.stream)
    assert len(store.events_of(ISSUE)) == 1
    cancel_events = [e.type for e in store.events_of(CANCEL)]
    assert len(cancel_events) == (2 if f"{CANCEL}:2" in keys else 1), cancel_events
    active = provider.active(IMP_UID)
    if partial:
        assert [r.amount for r in active] == [AMOUNT - played.refunded], provider.receipts(IMP_UID)
    else:
        assert active == [], provider.receipts(IMP_UID)


schedules = st.lists(st.sampled_from(MOVES), max_size=60)
fault_lists = st.lists(
    st.tuples(st.sampled_from(["POST", "DELETE"]), st.sampled_from(sorted(FAULTS)))
    | st.tuples(st.just("GET receipt"), st.just("503")),
    max_size=2,
)
redeliveries = st.sets(st.sampled_from([ISSUE, CANCEL])).map(frozenset)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    partial=st.booleans(),
    produce=st.booleans(),
    redeliver=redeliveries,
    faults=fault_lists,
    schedule=schedules,
)
def test_an_issue_and_a_refund_in_any_order(
    partial: bool,
    produce: bool,
    redeliver: frozenset[str],
    faults: list[tuple[str, str]],
    schedule: list[str],
) -> None:
    played = play(
        schedule, partial=partial, produce=produce, redeliver=redeliver, faults=tuple(faults)
    )
    check(played, partial=partial)


@pytest.mark.parametrize("produce", [True, False], ids=["recorded", "message-only"])
def test_a_confirmation_after_a_partial_refund_with_nothing_to_replace_issues_the_balance(
    produce: bool,
) -> None:
    """The refund's job ends before the confirmation reaches the store (a producer in
    another language records nothing; or the refund was recorded first): it found no
    receipt, and had no payload to re-issue from. The issue job then claims a finished
    job afresh (not resumed) and POSTs without looking. That is safe, not a blind re-POST:
    no request of the job is unsettled (a claim is resumed whenever ``sent_at`` is set),
    and the refund's own lookup found no receipt."""
    played = play(["refund", *["c"] * 40], partial=True, produce=produce)
    assert played.ends == {
        "c": Done(Outcome.CANCELLED),
        "i": Done(Outcome.ISSUED),
    }
    methods = [call.method for call in played.provider.calls]
    assert methods == ["GET receipt", "GET receipt", "GET payment", "POST"]
    check(played, partial=True)


def test_a_partial_refund_of_a_recorded_confirmation_reissues_itself() -> None:
    """The confirmation was recorded first, so the refund's job has the payload: it
    re-issues for the balance, and the issue message ends as a waiter of the job."""
    played = play(["confirm", "refund", *["c"] * 40], partial=True)
    assert played.ends == {
        "c": Done(Outcome.CANCELLED_REISSUED),
        "i": Done(Outcome.DONE),
    }
    [issue_event] = played.world.store.events_of(ISSUE)
    assert (issue_event.type, issue_event.data["duplicate"]) == ("cash_receipt.issued", True)
    check(played, partial=True)
