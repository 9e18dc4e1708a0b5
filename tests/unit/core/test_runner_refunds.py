"""The refund steps, run by the job runner against in-memory ports: no Celery, no Redis.

A full refund cancels the receipt. A partial one cancels it, then issues a receipt
for the balance; each step is recorded before the next, so a retry never cancels
the new receipt, and the same refund sent twice changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from tests.support.memory import DEFERRED, LOST, MemoryProvider
from tests.support.runners import RULES, World
from worker.core.errors import InvalidRequest
from worker.core.outcome import Outcome
from worker.core.ports import OperationId
from worker.core.runner import Done, Failed, Retry
from worker.core.types import Receipt, ReceiptOrder


def issued(world: World, amount: int = 1000) -> None:
    """imp_1 paid ``amount`` and its receipt issued, by the job's own runner."""
    world.provider.pay("imp_1", amount)
    assert world.issue_runner("t1").run() == Done(Outcome.ISSUED)


def amounts(world: World) -> list[tuple[int | None, bool]]:
    """Every receipt of imp_1, oldest first: (amount, active)."""
    return [(r.amount, r.active) for r in world.provider.receipts("imp_1")]


def test_a_full_refund_cancels_the_receipt() -> None:
    world = World()
    issued(world)
    world.provider.refund("imp_1", 1000)
    assert world.cancel_runner("c1").run() == Done(Outcome.CANCELLED)
    assert amounts(world) == [(1000, False)]
    assert world.provider.sent("POST") == 1  # nothing re-issued
    [event] = world.store.events_of("c1")
    assert event.type == "cash_receipt.cancelled"
    assert event.data["receipt"]["cancelled_at"]
    assert (world.store.raw_record("imp_1") or {})["state"] == "cancelled"
    # A stale confirmation of the same payment never issues again.
    assert world.issue_runner("t2").run() == Failed(
        "cancelled", "cancelled: the receipt of this payment was cancelled"
    )
    assert world.provider.sent("POST") == 1
    # The same refund again: a duplicate, nothing sent.
    assert world.cancel_runner("c2").run() == Done(Outcome.CANCELLED_DUPLICATE)
    assert world.provider.sent("DELETE") == 1


def test_a_partial_refund_cancels_then_reissues_the_balance() -> None:
    world = World()
    issued(world)
    world.provider.refund("imp_1", 300)
    # The DELETE, then, once i'mport can no longer act on it, the re-issue's POST.
    first = world.deliver(partial(world.cancel_runner, "c1", amount=300))
    assert first.instructions == [
        Retry(RULES.settle_seconds, "delete_settling"),
        Done(Outcome.CANCELLED_REISSUED),
    ]
    assert amounts(world) == [(1000, False), (700, True)]
    # One transition, two events: the cancellation and the new receipt.
    assert [e.type for e in world.store.events_of("c1")] == [
        "cash_receipt.cancelled",
        "cash_receipt.issued",
    ]
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "issued"
    assert '"amount": 700' in record["receipt"]
    # The same refund sent again (an outbox that repeats): the live receipt already
    # covers the balance, so nothing is cancelled and nothing issued.
    assert world.cancel_runner("c2", amount=300).run() == Done(Outcome.CANCELLED_DUPLICATE)
    assert amounts(world) == [(1000, False), (700, True)]
    # A second partial refund: the 700 receipt is replaced by one for 500.
    world.provider.refund("imp_1", 200)
    third = world.deliver(partial(world.cancel_runner, "c3", amount=200))
    assert third.last == Done(Outcome.CANCELLED_REISSUED)
    assert amounts(world)[-1] == (500, True)
    assert len(world.provider.active("imp_1")) == 1


def test_a_retry_after_the_cancel_step_only_reissues() -> None:
    """The DELETE is done and recorded; the re-issue waits out the bound after it (finding
    14), in the next attempt. That retry must not cancel again (that would cancel the
    receipt for the balance): it looks, POSTs; the POST's answer is lost, the lookup after
    it finds the new receipt, and the refund ends."""
    world = World()
    issued(world)
    world.provider.refund("imp_1", 300)
    world.provider.fail_next("POST", LOST)
    first = world.cancel_runner("c1", amount=300)
    retry = first.run()
    assert retry == Retry(RULES.settle_seconds, "delete_settling")
    assert (world.store.raw_record("imp_1") or {})["cancel_step"] == "cancelled"
    world.clock.advance(retry.delay)
    again = world.cancel_runner("c1", amount=300, fence=first.fence, attempt=2)
    assert again.run() == Done(Outcome.CANCELLED_REISSUED)
    assert world.provider.sent("DELETE") == 1
    assert amounts(world) == [(1000, False), (700, True)]


def test_an_ambiguous_delete_is_settled_by_a_lookup_after_the_bound() -> None:
    """A DELETE without an answer: the retry waits out the bound, then looks; the receipt
    it finds cancelled is the DELETE's doing, and nothing is sent again."""
    world = World()
    issued(world)
    world.provider.refund("imp_1", 1000)
    world.provider.fail_next("DELETE", DEFERRED)
    first = world.cancel_runner("c1")
    retry = first.run()
    assert retry == Retry(RULES.settle_seconds, "outcome_unknown")
    world.provider.act_late()
    world.clock.advance(retry.delay)
    assert world.cancel_runner("c1", fence=first.fence, attempt=2).run() == Done(Outcome.CANCELLED)
    assert world.provider.sent("DELETE") == 1
    assert amounts(world) == [(1000, False)]


def test_the_refund_steps_carry_their_claims_fence() -> None:
    """The DELETE and the re-issue's POST are two operations of one claim."""
    world = World()
    issued(world)
    world.provider.refund("imp_1", 300)
    world.deliver(partial(world.cancel_runner, "c1", amount=300))
    keys = [call.operation.key for call in world.provider.calls if call.operation]
    # The re-issue waits out the DELETE (finding 14): its POST is the next claim's.
    assert keys == ["issue:1:iamport:imp_1", "cancel:2:iamport:imp_1", "reissue:3:iamport:imp_1"]


class NoLookupProvider(MemoryProvider):
    """A PG whose receipts i'mport cannot show (Settlebank, KICC): the lookup finds none;
    only the payment's ``cash_receipt_issued`` says one is live."""

    def find_receipt(self, imp_uid: str) -> Receipt | None:
        super().find_receipt(imp_uid)
        return None


def test_a_repeated_partial_refund_without_a_receipt_lookup_is_a_duplicate() -> None:
    """Issue 14, finding 15: the lookup shows nothing, so the job's recorded receipt (the
    re-issue's answer) says the balance is covered: no DELETE, no POST, no third receipt."""
    world = World(provider=NoLookupProvider)
    issued(world)
    world.provider.refund("imp_1", 300)
    # The re-issue waits out the bound after the DELETE (finding 14): it POSTs in the next.
    first = world.deliver(partial(world.cancel_runner, "c1", amount=300))
    assert first.instructions == [
        Retry(RULES.settle_seconds, "delete_settling"),
        Done(Outcome.CANCELLED_REISSUED),
    ]
    assert amounts(world) == [(1000, False), (700, True)]
    assert world.cancel_runner("c2", amount=300).run() == Done(Outcome.CANCELLED_DUPLICATE)
    [event] = world.store.events_of("c2")
    assert (event.type, event.data["duplicate"]) == ("cash_receipt.cancelled", True)
    assert (world.provider.sent("DELETE"), world.provider.sent("POST")) == (1, 2)
    assert amounts(world) == [(1000, False), (700, True)]
    # A further refund still cancels and re-issues.
    world.provider.refund("imp_1", 200)
    third = world.deliver(partial(world.cancel_runner, "c3", amount=200))
    assert third.last == Done(Outcome.CANCELLED_REISSUED)
    assert amounts(world) == [(1000, False), (700, False), (500, True)]


def test_a_partial_refund_after_the_record_expired_says_it_could_not_reissue() -> None:
    """Issue 14, finding 9: past LEDGER_RETENTION the payload, and the identifier with it,
    is gone. The refund still cancels the receipt (a refunded payment keeps none live for
    the full amount), then ends in a failure event that says why nothing was re-issued; a
    confirmation sent again re-opens the job and issues the balance."""
    world = World()
    issued(world)
    del world.store.records["imp_1"]  # LEDGER_RETENTION passed
    world.provider.refund("imp_1", 300)
    outcome = world.cancel_runner("c1", amount=300).run()
    assert outcome == Done(Outcome.CANCELLED_REISSUE_FAILED, reason="no_payload")
    cancelled, failed = world.store.events_of("c1")
    assert cancelled.type == "cash_receipt.cancelled"
    assert cancelled.data["receipt"]["amount"] == 1000
    assert failed.type == "cash_receipt.failed"
    assert failed.data["error"]["reason"] == "no_payload"
    assert failed.data["error"]["retryable"] is False
    assert (world.store.raw_record("imp_1") or {})["state"] == "failed"
    assert amounts(world) == [(1000, False)]
    # The re-opened job POSTs only once i'mport can no longer act on the DELETE.
    again = world.deliver(partial(world.issue_runner, "t2"))
    assert again.instructions == [
        Retry(RULES.settle_seconds, "delete_settling"),
        Done(Outcome.ISSUED),
    ]
    assert amounts(world) == [(1000, False), (700, True)]


def unrecorded_and_refunded() -> World:
    """imp_1's receipt is live and the ledger knows none (here: its record expired; in
    the model, the issue's worker died after its POST); the payment is refunded in full."""
    world = World()
    issued(world)
    del world.store.records["imp_1"]
    world.provider.refund("imp_1", 1000)
    return world


def assert_live_receipt_recorded(world: World, outcome: object, reason: str) -> None:
    """c1 failed for good (``reason``), and its job records the live receipt, issued and
    a dead letter: not failed, which a confirmation would re-open and POST again."""
    assert isinstance(outcome, Failed) and outcome.reason == reason
    [event] = world.store.events_of("c1")
    assert event.type == "cash_receipt.cancel_failed"
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "issued"
    assert '"amount": 1000' in record["receipt"]
    assert "imp_1" in world.store.dead


def test_a_refund_refused_for_good_records_the_live_receipt_it_saw() -> None:
    """Model defect 5: the ledger has no receipt, the refund's lookup finds one live, and
    its DELETE is refused for good. The job records that receipt and stays issued."""
    world = unrecorded_and_refunded()
    world.provider.fail_next("DELETE", InvalidRequest("refused", status=400, code=-1))
    outcome = world.cancel_runner("c1").run()
    assert_live_receipt_recorded(world, outcome, "rejected")
    # A confirmation sent again is a duplicate of the live receipt: nothing is POSTed.
    assert world.issue_runner("t2").run() == Done(Outcome.ISSUED_DUPLICATE)
    assert world.provider.sent("POST") == 1
    assert amounts(world) == [(1000, True)]


def test_a_refund_whose_settling_lookup_finds_the_receipt_live_records_it() -> None:
    """Model defect 5, by the other way a cancel step fails for good: every DELETE went
    unanswered, and the settling attempt's lookup finds the receipt still live
    (retries_exhausted). The job records what that lookup saw, and stays issued."""
    world = unrecorded_and_refunded()
    world.provider.fail_next("DELETE", *[DEFERRED] * RULES.policy.max_attempts)
    fence = None
    for attempt in range(1, RULES.policy.max_attempts + 1):
        runner = world.cancel_runner("c1", fence=fence, attempt=attempt)
        retry = runner.run()
        assert isinstance(retry, Retry)
        fence = runner.fence
        world.clock.advance(retry.delay)
    settling = world.cancel_runner("c1", fence=fence, attempt=RULES.policy.max_attempts + 1)
    outcome = settling.run()
    assert_live_receipt_recorded(world, outcome, "retries_exhausted")


class TimedProvider(MemoryProvider):
    """Keeps when each POST and DELETE was sent, by the world's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.sent_at: list[tuple[str, float]] = []

    def issue_receipt(
        self, request: ReceiptOrder, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        self.sent_at.append(("POST", self._clock()))
        return super().issue_receipt(request, operation=operation, on_send=on_send)

    def cancel_receipt(
        self, imp_uid: str, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        self.sent_at.append(("DELETE", self._clock()))
        return super().cancel_receipt(imp_uid, operation=operation, on_send=on_send)


def test_no_reissue_post_before_the_bound_after_the_last_delete() -> None:
    """Issue 14, finding 14: i'mport may act on a DELETE late, and would cancel the receipt
    a POST issued meanwhile. The re-issue waits out the bound after the DELETE."""
    world = World(provider=TimedProvider)
    issued(world)
    world.provider.refund("imp_1", 300)
    assert world.deliver(partial(world.cancel_runner, "c1", amount=300)).last == Done(
        Outcome.CANCELLED_REISSUED
    )
    provider = world.provider
    assert isinstance(provider, TimedProvider)
    deletes = [at for method, at in provider.sent_at if method == "DELETE"]
    [post] = [at for method, at in provider.sent_at if method == "POST"][1:]
    assert post - max(deletes) >= RULES.settle_seconds
