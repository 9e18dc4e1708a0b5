"""The issue rule, run by the job runner against in-memory ports: no Celery, no Redis.

Look before POST: every attempt after the first, and every ambiguous answer, is
settled by a lookup, made no earlier than IAMPORT_SETTLE_SECONDS after the POST
it settles. The clock is the store's, moved by the test.
"""

from __future__ import annotations

from tests.support.memory import DEFERRED, LOST
from tests.support.runners import RULES, World
from worker.core.errors import InvalidRequest, ProviderUnavailable
from worker.core.outcome import Outcome
from worker.core.runner import Done, Failed, Retry

SETTLE = RULES.settle_seconds


def posts_and_lookups(world: World) -> tuple[int, int]:
    return world.provider.sent("POST"), world.provider.sent("GET receipt")


def test_a_first_attempt_posts_once_and_ends_issued() -> None:
    world = World()
    world.provider.pay("imp_1", 1000)
    assert world.issue_runner("t1").run() == Done(Outcome.ISSUED)
    assert posts_and_lookups(world) == (1, 0)  # a first attempt has nothing to look for
    [receipt] = world.provider.active("imp_1")
    [event] = world.store.events_of("t1")
    assert (event.type, event.data["duplicate"]) == ("cash_receipt.issued", False)
    assert event.data["receipt"]["receipt_tid"] == receipt.receipt_tid
    record = world.store.raw_record("imp_1") or {}
    assert (record["state"], record.get("sent_at")) == ("issued", None)


def test_a_retry_looks_before_it_posts() -> None:
    """The POST's answer was lost and the provider acted on it later: the retry finds the
    receipt and adopts it, with no second POST (not a duplicate: it is the job's own)."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", DEFERRED)
    first = world.issue_runner("t1")
    retry = first.run()
    assert isinstance(retry, Retry)
    world.provider.act_late()  # within the bound: the receipt exists before the retry looks
    world.clock.advance(retry.delay)
    again = world.issue_runner("t1", fence=first.fence, attempt=2).run()
    assert again == Done(Outcome.ISSUED)
    assert world.provider.sent("POST") == 1
    assert len(world.provider.receipts("imp_1")) == 1
    [event] = world.store.events_of("t1")
    assert (event.type, event.data["duplicate"]) == ("cash_receipt.issued", False)


def test_an_ambiguous_post_is_settled_by_a_lookup_after_the_settle_bound() -> None:
    """No answer and nothing found at once: the retry waits out IAMPORT_SETTLE_SECONDS from
    the POST. A message that comes earlier looks at nothing and waits the rest; the one
    after the bound looks, and finds the receipt the provider made meanwhile."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", DEFERRED)
    first = world.issue_runner("t1")
    retry = first.run()
    # The POST went out, nothing was found right after it: unsettled, a retry after the bound.
    assert retry == Retry(SETTLE, "outcome_unknown")
    assert posts_and_lookups(world) == (1, 1)
    assert (world.store.raw_record("imp_1") or {})["sent_at"] == repr(world.clock.now)

    world.clock.advance(SETTLE / 2)  # the retry arrives early (a redelivery, a clock's skew)
    early = world.issue_runner("t1", fence=first.fence, attempt=2)
    assert early.run() == Retry(SETTLE / 2, "outcome_unknown")
    assert posts_and_lookups(world) == (1, 1)  # it neither looked nor POSTed

    world.provider.act_late()  # the provider acts on the POST, within the bound
    world.clock.advance(SETTLE / 2)
    last = world.issue_runner("t1", fence=early.fence, attempt=3)
    assert last.run() == Done(Outcome.ISSUED)
    assert posts_and_lookups(world) == (1, 2)
    assert len(world.provider.receipts("imp_1")) == 1
    assert (world.store.raw_record("imp_1") or {}).get("sent_at") is None  # settled


def test_a_retry_finds_the_receipt_a_lost_answer_hid() -> None:
    """The POST was acted on, its answer lost, and the lookup right after it failed too:
    the retry, after the bound, looks first and finds the job's receipt."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", LOST)
    world.provider.fail_next("GET receipt", ProviderUnavailable("GET /receipts: 503", status=503))
    first = world.issue_runner("t1")
    retry = first.run()
    assert retry == Retry(SETTLE, "provider_unavailable")
    world.clock.advance(retry.delay)
    assert world.issue_runner("t1", fence=first.fence, attempt=2).run() == Done(Outcome.ISSUED)
    assert world.provider.sent("POST") == 1
    [event] = world.store.events_of("t1")
    assert event.data["duplicate"] is False  # the job's own receipt, not an earlier one


def test_a_receipt_that_predates_the_job_is_a_duplicate() -> None:
    """A first attempt's 400 behind which a receipt exists: issued, as a duplicate."""
    world = World()
    world.provider.pay("imp_1")
    assert world.issue_runner("t0").run() == Done(Outcome.ISSUED)
    world.store.records.clear()  # a job the store no longer knows (e.g. past retention)
    assert world.issue_runner("t1").run() == Done(Outcome.ISSUED_DUPLICATE)
    assert world.provider.sent("POST") == 2  # the first attempt of a new job POSTs
    assert len(world.provider.receipts("imp_1")) == 1


def test_an_unsettled_post_never_ends_failed_before_its_settling_lookup() -> None:
    """The budget spent while the POST is unsettled: the attempts after it only look; none
    found means not acted on, and only then the job fails, retries_exhausted."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", DEFERRED)
    # Every lookup fails until the budget is spent.
    world.provider.fail_next(
        "GET receipt", *[ProviderUnavailable("503", status=503) for _ in range(3)]
    )
    delivery = world.deliver(lambda **kw: world.issue_runner("t1", **kw))
    assert delivery.last == Failed(
        "retries_exhausted",
        "retries_exhausted: no answer, and the provider had not acted on the request after "
        "its settle bound (IAMPORT_SETTLE_SECONDS, PORTONE_SETTLE_SECONDS)",
    )
    assert world.provider.sent("POST") == 1  # the settling attempts never POST
    [event] = world.store.events_of("t1")
    assert event.type == "cash_receipt.failed"


def test_a_rejection_fails_at_once() -> None:
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", InvalidRequest("bad identifier", status=400, code=-1))
    result = world.issue_runner("t1").run()
    assert result == Failed("rejected", "rejected: HTTP 400: bad identifier")
    [event] = world.store.events_of("t1")
    assert event.data["error"]["reason"] == "rejected"
    assert (world.store.raw_record("imp_1") or {})["state"] == "failed"


def test_a_long_wait_parks_the_job_in_the_store() -> None:
    """A wait longer than RETRY_COUNTDOWN_MAX goes back to the store, not to a countdown."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next(
        "POST", ProviderUnavailable("busy", status=503, retry_after=RULES.countdown_max + 1)
    )
    assert world.issue_runner("t1").run() == Done(Outcome.PARKED, reason="provider_unavailable")
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "received"
    assert int(record["next_attempt_at"]) == int((world.clock.now + 121) * 1000)


def test_the_operation_id_carries_the_claims_fence() -> None:
    """The POST names its job and claim: a PortOne V2 idempotency key is made from it."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", ProviderUnavailable("503", status=503))
    first = world.issue_runner("t1")
    retry = first.run()
    assert isinstance(retry, Retry)
    world.clock.advance(retry.delay)
    world.issue_runner("t1", fence=first.fence, attempt=2).run()
    keys = [call.operation.key for call in world.provider.calls if call.operation]
    assert keys == ["issue:1:iamport:imp_1", "issue:2:iamport:imp_1"]


def test_a_request_whose_answer_was_lost_is_sent_again_under_its_key() -> None:
    """No answer (the provider may still act): the retry that finds nothing after the bound
    sends the same request, under the same generation, so a provider that keeps keys
    (PortOne V2) answers it rather than act twice. A definite answer ends the generation."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", DEFERRED)
    world.provider.fail_next("POST", ProviderUnavailable("503", status=503))
    first = world.issue_runner("t1")
    assert first.run() == Retry(SETTLE, "outcome_unknown")
    world.clock.advance(SETTLE)
    second = world.issue_runner("t1", fence=first.fence, attempt=2)
    retry = second.run()
    assert isinstance(retry, Retry)
    world.clock.advance(retry.delay)
    world.issue_runner("t1", fence=second.fence, attempt=3).run()
    keys = [call.operation.key for call in world.provider.calls if call.operation]
    assert keys == ["issue:1:iamport:imp_1", "issue:1:iamport:imp_1", "issue:3:iamport:imp_1"]


def test_a_task_that_ended_is_not_reopened_under_its_own_id() -> None:
    """Issue 14, finding 13: the same task id recorded again after its job failed (an ingress
    entry handled again after a crash before its XACK, a producer's retry of the same id)
    re-opened the job under it: no message could claim it (the task's marker answers
    ``done``), and once the marker expired the sweeper's re-send POSTed and published a
    second event. It is ``done`` now: the job stays failed, nothing is due."""
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", InvalidRequest("bad identifier", status=400, code=-1))
    assert world.store.receive("imp_1", task_id="t1", payload={}, resend_after=60) == "received"
    assert isinstance(world.issue_runner("t1").run(), Failed)
    again = world.store.receive("imp_1", task_id="t1", payload={}, resend_after=60)
    assert again == "done"
    assert (world.store.raw_record("imp_1") or {})["state"] == "failed"
    assert "imp_1" not in world.store.due
    # The marker expired (RESULT_STREAM_RETENTION): the record still says who ended the job.
    del world.store.markers["t1"]
    assert world.store.receive("imp_1", task_id="t1", payload={}, resend_after=60) == "done"
    assert world.issue_runner("t1").run() == Done(Outcome.DONE)
    assert (world.provider.sent("POST"), len(world.store.events_of("t1"))) == (1, 1)
    # Another task re-opens the failed job, as before.
    assert world.store.receive("imp_1", task_id="t2", payload={}, resend_after=60) == "received"
    assert world.issue_runner("t2").run() == Done(Outcome.ISSUED)


def test_the_same_task_recorded_again_while_its_job_is_in_hand_changes_nothing() -> None:
    world = World()
    world.provider.pay("imp_1")
    assert world.store.receive("imp_1", task_id="t1", payload={}, resend_after=60) == "received"
    claim = world.store.claim("imp_1", task_id="t1", payload={})
    assert world.store.receive("imp_1", task_id="t1", payload={}, resend_after=60) == "in_flight"
    assert world.store.waiters.get("imp_1", set()) == set()
    assert (world.store.raw_record("imp_1") or {})["fence"] == str(claim.fence)
