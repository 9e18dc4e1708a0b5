"""A payload no configured key opens ends in one failure event, and its job ends (issue 14, 5).

The keys rotate under the jobs: a payload sealed with key A, then every port handed
a sealer that holds only key B. Each op that needs the payload (an issue, a
sweeper's re-send, a partial refund before or after its cancel step) ends its
job in one event that says ``payload_unreadable``; a waiter ends with it; nothing
is left due, and nothing is sent to the provider that cannot be finished.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support.runners import World
from worker.adapters.privacy.sealing import Sealer
from worker.core.errors import ProviderUnavailable
from worker.core.outcome import Outcome
from worker.core.runner import Done, Failed, IssueRunner, UnreadableRunner, issue_request
from worker.core.schemas import PayloadUnreadable, kept_unreadable, load_payload, resealed
from worker.core.types import JobKey

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
UNREADABLE = "payload_unreadable"


def sealed_world() -> World:
    world = World()
    world.sealer = Sealer([KEY_A])
    world.provider.pay("imp_1", 1000)
    return world


def received(world: World, task_id: str = "t1") -> dict[str, Any]:
    """What a producer records and sends for imp_1, sealed under the world's newest key."""
    message = load_payload(world.payload(), world.sealer).to_message(world.sealer)
    world.store.receive("imp_1", task_id=task_id, payload=message, resend_after=60.0)
    return message


def rotate(world: World, *keys: str) -> None:
    world.sealer = Sealer(list(keys))


def run_issue(world: World, task_id: str, raw: dict[str, Any]) -> Done | Failed:
    """What the issue task does with its message: open it, or end its job unreadable."""
    store, provider, _ = world.ports
    terminal = world._terminal(task_id, "imp_1", 1)
    try:
        request = issue_request(raw, sealer=world.sealer, store=store, task_id=task_id)
    except PayloadUnreadable:
        unreadable = UnreadableRunner(
            store=store,
            provider=provider,
            terminal=terminal,
            rules=world.rules,
            job=JobKey.payment("imp_1"),
            message=kept_unreadable(raw),
        )
        instruction = unreadable.run()
    else:
        runner = IssueRunner(
            request=request,
            store=store,
            provider=provider,
            terminal=terminal,
            rules=world.rules,
            message=request.to_message(world.sealer),
        )
        instruction = runner.run()
    assert isinstance(instruction, Done | Failed)
    return instruction


def reason(world: World, task_id: str) -> list[tuple[str, str | None]]:
    return [
        (event.type, (event.data.get("error") or {}).get("reason"))
        for event in world.store.events_of(task_id)
    ]


def test_the_unreadable_issue_is_terminal_and_its_waiter_ends_too() -> None:
    world = sealed_world()
    message = received(world)
    world.store.receive("imp_1", task_id="t2", payload=message, resend_after=60.0)  # a waiter
    rotate(world, KEY_B)
    instruction = run_issue(world, "t1", message)
    assert isinstance(instruction, Failed)
    assert instruction.reason == UNREADABLE
    assert reason(world, "t1") == [("cash_receipt.failed", UNREADABLE)]
    # The failure is the owner's message's: the waiter takes the job over (it may carry a
    # payload that opens); its own payload opens no better, and it ends the same way.
    assert run_issue(world, "t2", message) == Failed(UNREADABLE, instruction.text)
    assert reason(world, "t2") == [("cash_receipt.failed", UNREADABLE)]
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "failed"
    assert "imp_1" not in world.store.due  # the sweeper has nothing to re-send
    assert world.provider.sent("POST") == 0
    # The job keeps the tokens as they came: the key back, a replay issues it.
    assert '"identifier_sealed"' in record["payload"]
    # The same message again (a sweeper re-send, a redelivery): nothing new.
    run_issue(world, "t1", message)
    assert len(world.store.events_of("t1")) == 1


def test_an_issue_runs_from_its_resealed_job_when_its_message_no_longer_opens() -> None:
    world = sealed_world()
    message = received(world)
    # cashreceipt reseal, with both keys, then key A is dropped.
    rotate(world, KEY_B, KEY_A)
    record = world.store.records["imp_1"]
    kept = load_payload(message, world.sealer)  # opens under A
    assert kept.imp_uid == "imp_1"
    again = resealed(message, world.sealer)
    assert again is not None and again["identifier_sealed"] != message["identifier_sealed"]
    assert resealed(again, world.sealer) is None  # idempotent: already the newest
    record["payload"] = json.dumps(again)
    rotate(world, KEY_B)
    assert run_issue(world, "t1", message) == Done(Outcome.ISSUED)
    assert len(world.provider.active("imp_1")) == 1
    # A job that ended lends its copy only to its owner: another message may ask for
    # another identifier, and nobody can read which.
    with pytest.raises(PayloadUnreadable):
        issue_request(message, sealer=world.sealer, store=world.store, task_id="t9")


def test_a_waiters_message_runs_from_its_open_resealed_job_whoever_owns_it() -> None:
    world = sealed_world()
    message = received(world)  # t1's message is lost: the job stays received
    world.store.receive("imp_1", task_id="t2", payload=message, resend_after=60.0)  # a waiter
    rotate(world, KEY_B, KEY_A)
    record = world.store.records["imp_1"]
    again = resealed(message, world.sealer)
    assert again is not None
    record["payload"] = json.dumps(again)  # cashreceipt reseal; then key A is dropped
    rotate(world, KEY_B)
    assert record["task_id"] == "t1"
    # The open job issues its payload whichever of its messages runs: the waiter's does.
    assert run_issue(world, "t2", message) == Done(Outcome.ISSUED)
    assert len(world.provider.active("imp_1")) == 1
    assert [event for event, _ in reason(world, "t2")] == ["cash_receipt.issued"]
    assert UNREADABLE not in [why for _, why in reason(world, "t1")]


def partial_refund_world() -> World:
    world = sealed_world()
    message = received(world)
    assert run_issue(world, "t1", message) == Done(Outcome.ISSUED)
    world.provider.refund("imp_1", 300)
    return world


def test_a_partial_refund_whose_payload_no_key_opens_cancels_nothing_and_fails_once() -> None:
    world = partial_refund_world()
    rotate(world, KEY_B)
    instruction = world.cancel_runner("c1", amount=300).run()
    assert isinstance(instruction, Failed)
    assert instruction.reason == UNREADABLE
    assert world.provider.sent("DELETE") == 0
    assert len(world.provider.active("imp_1")) == 1  # the receipt stays live
    assert reason(world, "c1") == [("cash_receipt.cancel_failed", UNREADABLE)]
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "issued"
    assert "imp_1" not in world.store.due


def test_a_reissue_after_the_cancel_step_whose_payload_no_key_opens_ends_the_job() -> None:
    world = partial_refund_world()
    # The cancel step is done under key A, then the re-issue is retried under key B only.
    world.provider.fail_next("POST", ProviderUnavailable("503"))
    first = world.cancel_runner("c1", amount=300).run()
    assert not isinstance(first, Done | Failed), first
    assert world.provider.sent("DELETE") == 1
    rotate(world, KEY_B)
    world.clock.advance(120)
    delivery = world.deliver(lambda **kw: world.cancel_runner("c1", amount=300, **kw))
    assert delivery.last == Done(Outcome.CANCELLED_REISSUE_FAILED, reason=UNREADABLE)
    assert reason(world, "c1") == [
        ("cash_receipt.cancelled", None),
        ("cash_receipt.failed", UNREADABLE),
    ]
    record = world.store.raw_record("imp_1") or {}
    assert record["state"] == "failed"
    assert "imp_1" not in world.store.due
    assert world.provider.sent("DELETE") == 1


def test_a_full_refund_needs_no_payload_and_cancels_as_ever() -> None:
    world = partial_refund_world()
    rotate(world, KEY_B)
    assert world.cancel_runner("c1").run() == Done(Outcome.CANCELLED)


def test_an_unreadable_duplicate_of_an_issued_job_is_a_duplicate() -> None:
    world = partial_refund_world()
    message = load_payload(world.payload(), world.sealer).to_message(world.sealer)
    rotate(world, KEY_B)
    assert run_issue(world, "t5", message) == Done(Outcome.ISSUED_DUPLICATE)


def test_a_waiter_whose_own_payload_opens_issues_after_the_unreadable_owner() -> None:
    world = sealed_world()
    message = received(world)
    rotate(world, KEY_B)
    again = received(world, "t2")  # the confirmation sent again, sealed under B: a waiter
    assert isinstance(run_issue(world, "t1", message), Failed)
    assert run_issue(world, "t2", again) == Done(Outcome.ISSUED)
    assert len(world.provider.active("imp_1")) == 1
    assert reason(world, "t2") == [("cash_receipt.issued", None)]
