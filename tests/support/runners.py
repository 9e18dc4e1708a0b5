"""Runners over the in-memory ports, and a Celery-free stand-in for a task's messages.

:class:`World` holds one clock, one :class:`~tests.support.memory.MemoryStore` and
one :class:`~tests.support.memory.MemoryProvider`, and builds runners over them
(optionally through a :class:`~tests.support.stepping.Stepper`'s gates).
:meth:`World.deliver` plays what tasks/receipts.py does with the runner's
instructions: a :class:`~worker.core.runner.Retry` becomes the task's next
message (the same task id, the fence carried, the clock moved by its countdown),
a :class:`~worker.core.runner.Busy` is polled again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.memory import Clock, MemoryProvider, MemoryStore
from tests.support.stepping import Stepper
from worker.adapters.privacy.sealing import Sealer
from worker.core.ports import EventPublisher, JobStore, Provider
from worker.core.retry import RetryPolicy
from worker.core.runner import (
    Busy,
    CancelRunner,
    Done,
    Failed,
    Instruction,
    IssueRunner,
    JobRunner,
    Retry,
    Rules,
)
from worker.core.schemas import load_payload
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey

POLICY = RetryPolicy(
    max_attempts=3, issuance_failed_max_attempts=2, backoff_base=1.0, backoff_max=4.0
)
#: IAMPORT_SETTLE_SECONDS 60, RETRY_COUNTDOWN_MAX 120: a settling wait is a countdown.
RULES = Rules(policy=POLICY, settle_seconds=60.0, countdown_max=120.0)
#: Busy polls before :meth:`World.deliver` gives up (a task retries then).
POLLS = 1000


@dataclass
class Delivery:
    """What happened to one task's messages: each run's instruction, in order."""

    task_id: str
    instructions: list[Instruction] = field(default_factory=list)
    runners: list[JobRunner] = field(default_factory=list)

    @property
    def last(self) -> Instruction:
        return self.instructions[-1]


class World:
    """One payment provider, one job store, one clock; runners over them."""

    def __init__(
        self,
        *,
        rules: Rules = RULES,
        stepper: Stepper | None = None,
        provider: Callable[[Clock], MemoryProvider] = MemoryProvider,
    ) -> None:
        self.rules = rules
        self.clock = Clock()
        self.store = MemoryStore(self.clock)
        #: ``provider`` builds it: a test's subclass may model more of i'mport.
        self.provider = provider(self.clock)
        self.sealer = Sealer([], allow_plaintext=True)
        self.stepper = stepper
        port_store: JobStore = self.store
        port_provider: Provider = self.provider
        port_events: EventPublisher = self.store.events
        if stepper is not None:
            port_store = stepper.gated("store", port_store)
            port_provider = stepper.gated("provider", port_provider)
            port_events = stepper.gated("events", port_events)
        #: The ports the runners get (gated when a stepper is given).
        self.ports = (port_store, port_provider, port_events)

    def payload(self, imp_uid: str = "imp_1") -> dict[str, Any]:
        """A confirmation's payload (the identifier in clear: plaintext allowed here)."""
        return {"imp_uid": imp_uid, "identifier": "01055554321", "merchant_uid": f"m_{imp_uid}"}

    def _terminal(self, task_id: str, imp_uid: str, attempts: int) -> TerminalPublisher:
        store, _, events = self.ports
        return TerminalPublisher(
            events=events,
            store=store,
            task_id=task_id,
            attempts=attempts,
            job=JobKey.payment(imp_uid),
            merchant_uid=f"m_{imp_uid}",
        )

    def issue_runner(
        self,
        task_id: str,
        imp_uid: str = "imp_1",
        *,
        fence: int | None = None,
        attempt: int = 1,
        runner: type[IssueRunner] = IssueRunner,
    ) -> IssueRunner:
        """A run of ``issue_cash_receipt``'s message ``task_id`` (``fence``: the one it carries)."""
        store, provider, _ = self.ports
        request = load_payload(self.payload(imp_uid), self.sealer)
        return runner(
            request=request,
            store=store,
            provider=provider,
            terminal=self._terminal(task_id, imp_uid, attempt),
            rules=self.rules,
            message=request.to_message(self.sealer),
            carried_fence=fence,
            attempt=attempt,
        )

    def cancel_runner(
        self,
        task_id: str,
        imp_uid: str = "imp_1",
        *,
        amount: int | None = None,
        fence: int | None = None,
        attempt: int = 1,
        runner: type[CancelRunner] = CancelRunner,
    ) -> CancelRunner:
        """A run of ``cancel_cash_receipt``'s message ``task_id`` (partial: ``amount``)."""
        store, provider, _ = self.ports
        message: dict[str, Any] = {"imp_uid": imp_uid}
        if amount is not None:
            message["amount"] = amount
        return runner(
            sealer=self.sealer,
            store=store,
            provider=provider,
            terminal=self._terminal(task_id, imp_uid, attempt),
            rules=self.rules,
            message=message,
            carried_fence=fence,
            attempt=attempt,
        )

    def deliver(
        self,
        make: Callable[..., JobRunner],
        *,
        messages: int = 20,
        until: Callable[[Instruction], bool] | None = None,
    ) -> Delivery:
        """Run a task's messages as the worker would, until one ends the task.

        ``make(fence=..., attempt=...)`` builds the runner of each message. A
        :class:`Retry` is the next message, ``delay`` later by the clock, with the
        fence carried; :class:`Busy` is polled (the clock moves 0.1 s). ``until``
        stops earlier, after the first instruction it accepts.
        """
        delivery: Delivery | None = None
        fence: int | None = None
        attempt = 1
        for _ in range(messages):
            runner = make(fence=fence, attempt=attempt)
            if delivery is None:
                delivery = Delivery(runner.terminal.task_id)
            delivery.runners.append(runner)
            instruction = runner.run()
            polls = 0
            while isinstance(instruction, Busy) and polls < POLLS:
                self.clock.advance(0.1)
                instruction = runner.run()
                polls += 1
            delivery.instructions.append(instruction)
            if until is not None and until(instruction):
                return delivery
            if isinstance(instruction, Done | Failed):
                return delivery
            if isinstance(instruction, Retry):
                self.clock.advance(instruction.delay)
                fence, attempt = runner.fence, attempt + 1
            else:  # Busy past the bound: a retry without a claim
                fence, attempt = None, attempt + 1
        assert delivery is not None
        return delivery
