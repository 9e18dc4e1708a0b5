"""The world of the model-based test (tests/integration/test_model.py): the real ledger on a
private Redis, the core's runners stepped one port call at a time, an adversarial provider.

What is real: the ledger (:class:`~worker.adapters.store.ledger.Ledger`, every transition
its Lua script on a real redis-server), the event publisher, the sweeper
(:class:`~worker.adapters.store.sweeper.Sweeper`, its ``send`` captured), the core's
runners, and the producer's rule (record in the ledger first, then send).

What is modelled: the broker (a list of :class:`Message`, redelivered, duplicated, lost
at will), the Celery task around a runner (tasks/receipts.py: a :class:`Retry` becomes
the next message carrying the fence, :class:`Busy` a retry without one), a worker
process (a thread of :class:`~tests.support.stepping.Stepper`, crashed at any gate),
and i'mport (:class:`ModelProvider`): two payments and one external sale (a V1 external
receipt, named by its merchant_uid), whose confirmations may ask for another amount; and
PortOne V2 (:class:`PortOneModel`, issue 16): a payment (read before anything is sent) and a
sale, each named by its paymentId, with Idempotency-Keys that expire, in the middle of a
job when the model says so.

The ledger, the provider and the broker's countdowns read one clock: the ledger's
(:class:`~tests.support.ledger_clock.LedgerClock`, Redis's TIME), which the model
moves by the ledger's test offset.
"""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import redis
from cryptography.fernet import Fernet

from tests.support.ledger_clock import LedgerClock
from tests.support.memory import DEFERRED, LOST, MemoryProvider
from tests.support.payloads import external_payload, portone_payload
from tests.support.rerun import RerunningRedis
from tests.support.runners import RULES
from tests.support.stepping import Abandoned, Stepper
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.events import EventPublisher as RedisEvents
from worker.adapters.store.ledger import FENCE_HEADER, Ledger
from worker.adapters.store.reseal import reseal
from worker.adapters.store.sweeper import Sweeper
from worker.adapters.store.views import stuck
from worker.celery.producer import SETTLED, end_settled
from worker.cli.operations import Mismatch, reconcile
from worker.core.contract import CANCEL_TASK, EXTERNAL, PAYMENT, PORTONE
from worker.core.errors import (
    InvalidRequest,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
)
from worker.core.events import CANCELLED, FAILED, ISSUED
from worker.core.ports import EventPublisher, JobStore, OperationId, Provider
from worker.core.retry import ID_CONFLICT
from worker.core.runner import (
    Busy,
    CancelRunner,
    Failed,
    Instruction,
    IssueRunner,
    JobRunner,
    Retry,
    UnreadableRunner,
    issue_request,
)
from worker.core.schemas import (
    PAYLOAD_UNREADABLE,
    InvalidPayload,
    PayloadUnreadable,
    kept_unreadable,
    load_cancellation,
    payload_from_args,
    payload_job,
    readable_job,
    readable_merchant_uid,
)
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey, Payment, Receipt

#: The payments the model plays with: two, so that one payment's keys meet another's.
PAYMENTS = ("imp_a", "imp_b")
AMOUNT = 1000
#: The external sale (a V1 external receipt, issue 15): its merchant_uid is a payment's
#: imp_uid, so that two kinds' keys of one string meet.
SALE = JobKey.external(PAYMENTS[0])
#: What its confirmations ask for: the sale's amount, or another sale's under the same
#: merchant_uid (merchants reuse their ids), which is never this one's duplicate.
SALE_AMOUNTS = (AMOUNT, AMOUNT + 100)
#: PortOne V2's jobs (issue 16): a payment, whose payment is read before anything is sent,
#: and a sale (cash taken outside). Their paymentIds are the V1 jobs' ids, so that the keys
#: of three kinds of one string meet.
V2_PAYMENT = JobKey.portone(PAYMENTS[1])
V2_SALE = JobKey.portone(PAYMENTS[0], EXTERNAL)
#: The external sales, V1's and V2's: their confirmations may ask for another sale's amount.
SALES = (SALE, V2_SALE)
#: The channel V2's payloads name (the model's PortOne takes any).
CHANNEL = "channel-model"
#: How long PortOne V2 keeps an Idempotency-Key after its first request (PortOne: 3 hours):
#: past the settle bound, so a settling retry finds its key kept or expired as the clock
#: moves; ``expire_keys`` ends every key at once.
KEY_RETENTION = 90.0
#: Every job the model plays with.
JOBS = (*(JobKey.payment(imp_uid) for imp_uid in PAYMENTS), SALE, V2_PAYMENT, V2_SALE)
#: A partial refund's amount: three of them leave 100, a fourth refunds the rest.
PART = 300
LEASE = 30.0
#: How late the provider may act on a request it left unanswered, after it arrived: the
#: bound the core waits out, less half a second (the ledger keeps times in ms).
BOUND = RULES.settle_seconds - 0.5
#: The producer's resend_after: how long the sweeper leaves a recorded job to its message.
RESEND_AFTER = 120.0
#: A task's retry without a claim (Busy past DUPLICATE_WAIT): its countdown.
BUSY_COUNTDOWN = 1.0
#: Far beyond any clock jump of a run: events and records never expire under the model.
RETENTION = 10 * 365 * 86400
STREAM = "model.events"
#: A drain's round lets every runner make this many calls at most: more is a runner
#: (or a chain of retries) that never ends.
CALLS_PER_ROUND = 2000

#: The faults a request may meet (the provider's answer), by name.
#: ``lost``: acted on, the answer lost; ``late``: no answer, acted on later (within
#: BOUND); ``dropped``: no answer, never acted on; ``503``: refused before acting,
#: transient; ``429``: rate limited for 300 s (the job parks); ``400``: refused for good.
CHANGING_FAULTS = ("lost", "late", "dropped", "503", "429", "400")
LOOKUP_FAULTS = ("503",)
#: A fault: no answer, and the provider never acts on the request.
DROPPED = "dropped"


# -- the provider ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """A POST or DELETE as it arrived at the provider."""

    method: str
    #: The payment's imp_uid, or the external sale's receipt key.
    imp_uid: str
    at: float
    operation: OperationId | None
    #: The payment's (or the sale's) active receipts when it arrived.
    active_before: int


class ModelProvider(MemoryProvider):
    """i'mport as an adversary that still keeps its promises.

    - It accepts a second active receipt (i'mport refuses it): a double POST is
      not hidden by a refusal, it is recorded (:attr:`violations`).
    - A request left unanswered (``late``) is acted on whenever the model says
      (:meth:`act_late`), and at the latest :data:`BOUND` after it arrived: the
      promise the core relies on (IAMPORT_SETTLE_SECONDS).
    - Faults are queued per method (:meth:`fail_next`), and met by whichever
      payment (or the external sale) calls next.
    """

    refuses_second = False
    late_bound = BOUND

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.sent_requests: list[Sent] = []
        #: What broke an invariant of the provider's side, as it happened.
        self.violations: list[str] = []

    def drop_faults(self) -> None:
        """Forget the faults no call met: the final drain runs with a healthy provider."""
        self._faults.clear()

    def active_count(self, name: str) -> int:
        """The active receipts of a payment (its imp_uid) or an external sale (its receipt key)."""
        return len(self.active(name))

    # -- the port ----------------------------------------------------------------------

    def _changing(self, method: str, action: Callable[[], Receipt]) -> Receipt:
        call = self.calls[-1]
        now = self._clock()
        active = self.active_count(call.imp_uid)
        self.sent_requests.append(Sent(method, call.imp_uid, now, call.operation, active))
        if method == "POST" and active:
            self.violations.append(
                f"a POST ({call.operation and call.operation.key}) while {active} "
                f"receipt(s) of {call.imp_uid} were active"
            )
        fault = self._fault(method)
        if fault in (DEFERRED, DROPPED):
            if fault == DEFERRED:
                self._defer(lambda: self._watched(action))
            raise OutcomeUnknown(f"{method}: read timeout; the outcome must be looked up")
        receipt = self._watched(action)
        if fault == LOST:
            raise OutcomeUnknown(f"{method}: connection dropped; the outcome must be looked up")
        return receipt

    def _watched(self, action: Callable[[], Receipt]) -> Receipt:
        try:
            return action()
        finally:
            for imp_uid in self._payments:
                if self.active_count(imp_uid) > 1:
                    self.violations.append(
                        f"{self.active_count(imp_uid)} active receipts of {imp_uid}"
                    )


@dataclass
class _Kept:
    """An Idempotency-Key PortOne V2 keeps: its first request's time, and the answer of the
    work done under it; None while that work is still being processed (outstanding)."""

    first: float
    answer: Receipt | ProviderError | None = None


class PortOneModel(ModelProvider):
    """PortOne V2 as an adversary that keeps its promises, beside i'mport's (docs/sandbox.md).

    - An Idempotency-Key on every POST (the issue, the cancel): the work's answer is kept
      :data:`KEY_RETENTION` after the key's first request (or until :meth:`expire_keys`) and
      replayed to a request under the key, which does nothing again; a request under a key
      whose work is still being processed is a 409, an unknown outcome. A key that expired
      is new: the same request acts again.
    - A 5xx before the API (the ``503`` fault) is a gateway's page: to a POST, an unknown
      outcome, as the V2 adapter reads it (worker/adapters/portone/answers.py).
    - Beside :class:`ModelProvider`'s: a POST to issue under a new key after one went
      unanswered, with no lookup answered since, is a violation (the sandbox's blind retry).
    """

    name = PORTONE
    clean_answer: tuple[int | None, int | None] = (200, None)

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(clock)
        self.keys: dict[str, _Kept] = {}
        #: Job name -> the key of its last POST to issue, while it went unanswered.
        self._unanswered: dict[str, str] = {}
        #: The key of the request being handled (a deferred one is outstanding under it).
        self._key: str | None = None

    def expire_keys(self) -> None:
        """Every key whose work is done expires now: its request, sent again, acts again."""
        self.keys = {key: kept for key, kept in self.keys.items() if kept.answer is None}

    # -- the port: lookups ---------------------------------------------------------------

    def find_receipt(self, job: JobKey | str) -> Receipt | None:
        found = super().find_receipt(job)
        self._unanswered.pop(_job_name(job), None)
        return found

    def get_payment(self, imp_uid: str) -> Payment:
        """A V2 payment, by its paymentId (kept under its receipt key)."""
        name = JobKey.portone(imp_uid).receipt_key
        payment = super().get_payment(name)
        self._unanswered.pop(name, None)
        return payment

    def _receipts_of(self, job: JobKey | str) -> list[Receipt]:
        """A paymentId's receipts; none before its first (V2's 404), of either kind."""
        held = self._payments.get(_job_name(job))
        return held.receipts if held is not None else []

    # -- the port: changes ---------------------------------------------------------------

    def _changing(self, method: str, action: Callable[[], Receipt]) -> Receipt:
        call = self.calls[-1]
        assert call.operation is not None, "a V2 POST carries its key"
        key = call.operation.key
        kept = self.keys.get(key)
        if kept is not None and kept.answer is not None and self._expired(kept):
            del self.keys[key]
            kept = None
        if method == "POST":
            earlier = self._unanswered.get(call.imp_uid)
            if earlier is not None and earlier != key:
                self.violations.append(
                    f"a POST under a new key ({key}) after {earlier} went unanswered, "
                    "with no lookup answered since"
                )
        self._key = key
        try:
            receipt = super()._changing(method, lambda: self._keyed(key, kept, action))
        except ProviderUnavailable as error:
            self._went_unanswered(method, call.imp_uid, key)
            raise OutcomeUnknown(f"{method}: a gateway's page; look it up", status=503) from error
        except TransientError:
            self._went_unanswered(method, call.imp_uid, key)
            raise
        except ProviderError:
            self._unanswered.pop(call.imp_uid, None)
            raise
        self._unanswered.pop(call.imp_uid, None)
        return receipt

    def _expired(self, kept: _Kept) -> bool:
        return self._clock() >= kept.first + KEY_RETENTION

    def _went_unanswered(self, method: str, name: str, key: str) -> None:
        if method == "POST":
            self._unanswered[name] = key

    def _defer(self, action: Callable[[], object]) -> None:
        """A request left unanswered: its key is outstanding until the work is done."""
        if self._key is not None and self._key not in self.keys:
            self.keys[self._key] = _Kept(first=self._clock())
        super()._defer(action)

    def _keyed(self, key: str, kept: _Kept | None, action: Callable[[], Receipt]) -> Receipt:
        """The work under ``key``: the kept answer replayed, or done and kept."""
        if kept is not None:
            if kept.answer is None:
                raise OutcomeUnknown("409 IDEMPOTENCY_OUTSTANDING_REQUEST", status=409)
            if isinstance(kept.answer, ProviderError):
                raise kept.answer
            return kept.answer
        entry = self.keys.setdefault(key, _Kept(first=self._clock()))
        try:
            receipt = action()
        except ProviderError as error:
            entry.answer = error
            raise
        entry.answer = receipt
        return receipt


def _job_name(job: JobKey | str) -> str:
    """A V2 job's name in the provider: its receipt key (``portone:<paymentId>``)."""
    return job if isinstance(job, str) else job.receipt_key


def fault(kind: str) -> ProviderError | str:
    """The fault ``kind`` (:data:`CHANGING_FAULTS`) as :meth:`ModelProvider.fail_next` takes it."""
    if kind == "503":
        return ProviderUnavailable("503 Service Unavailable", status=503)
    if kind == "429":
        return RateLimited("429 Too Many Requests", status=429, retry_after=300.0)
    if kind == "400":
        return InvalidRequest("refused", status=400, code=-1)
    return {"lost": LOST, "late": DEFERRED, "dropped": DROPPED}[kind]


# -- the broker and the tasks ----------------------------------------------------------


@dataclass(frozen=True)
class LiveSealer:
    """The sealer of whatever keys are configured now, in every process at once.

    README's rotation restarts every process with the new keys before anything is
    re-sealed; a runner that started before a rotation must not keep the old set.
    """

    keys: list[str]

    @property
    def enabled(self) -> bool:
        return True

    def seal(self, value: str) -> str:
        return Sealer(self.keys).seal(value)

    def open(self, token: str) -> tuple[str, bool]:
        return Sealer(self.keys).open(token)


@dataclass(frozen=True)
class Message:
    """One task message in the broker."""

    task_id: str
    op: str  # issue or cancel
    payload: dict[str, Any]
    #: The fence header it carries (a retry's, a sweeper re-send's); None: none.
    fence: int | None
    #: Celery's retries + 1.
    attempt: int
    #: Not delivered before (the model's clock): a retry's countdown.
    eta: float


@dataclass
class Ran:
    """What one message's run ended with."""

    instruction: Instruction
    fence: int | None
    #: The payload its retry re-publishes (sealed), when it was valid.
    message: dict[str, Any] | None


@dataclass
class Task:
    """One task id a producer sent: it must end in exactly one terminal event."""

    task_id: str
    op: str
    job: JobKey
    #: A cancellation's payload, as its producer sent it.
    cancel: dict[str, Any] | None = None
    #: The amount an external receipt's confirmation asks for.
    amount: int | None = None
    #: Whether another confirmation of its job was open at the same time (README: a
    #: confirmation that waits on another hears its outcome, whatever its amount).
    overlapped: bool = False


@dataclass
class World:
    """The model's system: see the module docstring."""

    client: redis.Redis
    clock: LedgerClock = field(init=False)
    stepper: Stepper = field(default_factory=lambda: Stepper(timeout=10.0))
    broker: list[Message] = field(default_factory=list)
    #: Runner name -> the message it runs.
    running: dict[str, Message] = field(default_factory=dict)
    tasks: dict[str, Task] = field(default_factory=dict)
    #: The sealing keys, newest first (rotation prepends one).
    keys: list[str] = field(default_factory=lambda: [Fernet.generate_key().decode()])
    #: What happened, in words: the schedule a failure shows.
    log: list[str] = field(default_factory=list)
    #: What broke an invariant on the system's side (a runner's unexpected error).
    violations: list[str] = field(default_factory=list)
    #: Every kept payload is sealed under the newest key (a complete reseal since the
    #: last rotation): the older keys may go.
    resealed: bool = True
    #: Task ids whose event said payload_unreadable.
    unreadable: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock = LedgerClock(self.client)
        #: The ledger's, the events' and the sweeper's client: it re-runs the next script
        #: call when told (``rerun``), as redis-py's retry after a lost reply does.
        self.rerunning = RerunningRedis(connection_pool=self.client.connection_pool)
        self.provider = ModelProvider(self.clock)
        for imp_uid in PAYMENTS:
            self.provider.pay(imp_uid, AMOUNT)
        self.portone = PortOneModel(self.clock)
        self.portone.pay(V2_PAYMENT.receipt_key, AMOUNT, pay_method="trans")
        #: The V2 jobs refunded (in full: V2's cancel takes no amount).
        self.refunded_v2: set[JobKey] = set()
        self.ledger = Ledger(
            self.rerunning,
            stream=STREAM,
            event_retention_seconds=RETENTION,
            retention_seconds=RETENTION,
            lease_seconds=LEASE,
            clock_offset=self.clock.offset,
        )
        self.events = RedisEvents(
            self.rerunning,
            stream=STREAM,
            retention_seconds=RETENTION,
            clock_offset=self.clock.offset,
        )
        self.sweeper = Sweeper(
            ledger=self.ledger,
            client=self.rerunning,
            send=self._resend,
            interval=1.0,
            rand=lambda: 0.0,
        )
        self.gated_store: JobStore = self.stepper.gated("store", self.ledger)
        self.gated_provider: Provider = self.stepper.gated("provider", self.provider)
        self.gated_portone: Provider = self.stepper.gated("provider", self.portone)
        self.gated_events: EventPublisher = self.stepper.gated("events", self.events)
        self._names = (f"r{n}" for n in itertools.count(1))
        self._events: dict[str, list[str]] = {}
        self.event_data: dict[str, list[dict[str, Any]]] = {}
        self._read_to = "0-0"
        self._task_ids = (f"t{n}" for n in itertools.count(1))

    @property
    def sealer(self) -> LiveSealer:
        return LiveSealer(self.keys)

    def say(self, line: str) -> None:
        self.log.append(line)

    @property
    def providers(self) -> tuple[ModelProvider, ModelProvider]:
        """i'mport and PortOne V2."""
        return self.provider, self.portone

    def provider_of(self, job: JobKey) -> ModelProvider:
        """The provider a job's requests go to (the runtime's ``Runtime.client``)."""
        return self.portone if job.provider == PORTONE else self.provider

    # -- producers -----------------------------------------------------------------------

    def confirm(self, payment: str | JobKey, task_id: str | None = None) -> str:
        """A payment confirmed (a V1 imp_uid, or the V2 payment's job): the producer's rule
        (worker/celery/producer.py enqueue_issue)."""
        job = JobKey.of(payment)
        if job.provider == PORTONE:
            return self._confirm(portone_payload(job.id, CHANNEL, PAYMENT, amount=AMOUNT), task_id)
        payload = {"imp_uid": job.id, "identifier": "01055554321", "merchant_uid": f"m_{job.id}"}
        return self._confirm(payload, task_id)

    def confirm_sale(self, amount: int, task_id: str | None = None, *, sale: JobKey = SALE) -> str:
        """An external sale (V1's, or V2's) confirmed, for ``amount`` (the producer's rule, as
        for a payment)."""
        if sale.provider == PORTONE:
            payload = portone_payload(sale.id, CHANNEL, EXTERNAL, amount=amount)
        else:
            payload = external_payload(sale.id, amount=amount)
        return self._confirm(payload, task_id)

    def _confirm(self, payload: dict[str, Any], task_id: str | None) -> str:
        task_id = task_id or next(self._task_ids)
        sealer = self.sealer
        request = payload_from_args((payload,), {}, sealer)
        job = request.job
        amount = payload["amount"] if job.kind == EXTERNAL else None
        task = self.tasks.setdefault(task_id, Task(task_id, "issue", job, amount=amount))
        self._meet(task)
        message = request.to_message(sealer)
        state = self.ledger.receive(
            job, task_id=task_id, payload=message, resend_after=RESEND_AFTER
        )
        self.say(
            f"confirm {job.receipt_key}{f' for {amount}' if amount else ''} as {task_id}: {state}"
        )
        if state in SETTLED:
            return end_settled(
                self.ledger, self.events, op="issue", state=state, message=message, task_id=task_id
            )
        self._send(Message(task_id, "issue", message, None, 1, self.clock()))
        return task_id

    def refund(self, imp_uid: str, *, partial: bool) -> str | None:
        """A refund at the provider, then its cancellation (enqueue_cancel); None: nothing left."""
        payment = self.provider._payment(imp_uid)
        left = payment.amount - payment.cancel_amount
        if left <= 0:
            return None
        amount = min(PART, left) if partial else left
        self.provider.refund(imp_uid, amount)
        cancel: dict[str, Any] = {"imp_uid": imp_uid}
        if partial:
            cancel["amount"] = amount
        return self.cancel(cancel)

    def refund_v2(self, job: JobKey) -> str | None:
        """A V2 receipt refunded in full (the payment's refund at PortOne first), then its
        cancellation; None: refunded already."""
        if job in self.refunded_v2:
            return None
        self.refunded_v2.add(job)
        if job.kind == PAYMENT:
            self.portone.refund(job.receipt_key, AMOUNT)
        return self.cancel({"provider": PORTONE, "kind": job.kind, "payment_id": job.id})

    def cancel(self, cancel: dict[str, Any], task_id: str | None = None) -> str:
        """A cancellation sent (a new refund, or one repeated by an outbox relay)."""
        task_id = task_id or next(self._task_ids)
        message = load_cancellation(cancel)
        job = payload_job(message)
        self.tasks.setdefault(task_id, Task(task_id, "cancel", job, dict(cancel)))
        state = self.ledger.receive_cancel(
            job, task_id=task_id, cancel=message, resend_after=RESEND_AFTER
        )
        self.say(f"refund {json.dumps(cancel)} as {task_id}: {state}")
        if state == "cancelled":
            return end_settled(
                self.ledger, self.events, op="cancel", state=state, message=message, task_id=task_id
            )
        if state != "done":
            self._send(Message(task_id, "cancel", message, None, 1, self.clock()))
        return task_id

    def _meet(self, task: Task) -> None:
        """``task`` and the confirmations of its job still without their event overlap."""
        events = self.events_by_task()
        for other in self.tasks.values():
            same = other is not task and (other.op, other.job) == ("issue", task.job)
            if same and other.task_id not in events:
                other.overlapped = task.overlapped = True

    def sale_failure(self, sale: JobKey = SALE) -> str | None:
        """The reason the sale's job failed, while it is failed."""
        record = self.ledger.raw_record(sale) or {}
        if record.get("state") != "failed":
            return None
        return str(json.loads(record.get("last_error") or "{}").get("reason"))

    def open_sale_amounts(self, sale: JobKey = SALE) -> set[int | None]:
        """The amounts the external sale's confirmations without their event ask for."""
        events = self.events_by_task()
        return {t.amount for t in self.tasks.values() if t.job == sale and t.task_id not in events}

    def _send(self, message: Message) -> None:
        self.broker.append(message)

    def _resend(
        self,
        name: str,
        *,
        args: list[Any],
        task_id: str,
        countdown: float,
        headers: dict[str, Any],
        **_: Any,
    ) -> None:
        op = "cancel" if name == CANCEL_TASK else "issue"
        fence = headers.get(FENCE_HEADER)
        self.say(f"sweeper re-sends {task_id} ({op}, fence {fence})")
        self._send(Message(task_id, op, args[0], fence, 1, self.clock() + countdown))

    # -- workers ---------------------------------------------------------------------------

    def due(self) -> list[Message]:
        now = self.clock()
        return [m for m in self.broker if m.eta <= now]

    def deliver(self, message: Message) -> str:
        """A worker takes ``message``: its run starts, and waits at its first gate."""
        self.broker.remove(message)
        name = next(self._names)
        self.running[name] = message
        self.say(
            f"{name} runs {message.task_id} ({message.op}, fence {message.fence}, "
            f"attempt {message.attempt})"
        )
        self.stepper.start(name, lambda: self._run(message))
        self._reap(name)
        return name

    def _run(self, message: Message) -> Ran:
        """tasks/receipts.py's run, without Celery: the payload, the runner, its instruction."""
        terminal = TerminalPublisher(
            events=self.gated_events,
            store=self.gated_store,
            task_id=message.task_id,
            attempts=message.attempt,
            job=readable_job(message.payload),
            merchant_uid=readable_merchant_uid(message.payload),
        )
        sealer = self.sealer
        v2 = terminal.job is not None and terminal.job.provider == PORTONE
        ports: dict[str, Any] = {
            "store": self.gated_store,
            "provider": self.gated_portone if v2 else self.gated_provider,
            "terminal": terminal,
            "rules": RULES,
            "carried_fence": message.fence,
            "attempt": message.attempt,
        }
        runner: JobRunner
        if message.op == "issue":
            try:
                request = issue_request(
                    message.payload, sealer=sealer, store=self.gated_store, task_id=message.task_id
                )
            except PayloadUnreadable as error:
                if terminal.job is None:
                    terminal.invalid_payload(error)
                    return Ran(Failed(error.reason, str(error)), None, None)
                runner = UnreadableRunner(
                    job=terminal.job,
                    message=kept_unreadable(message.payload),
                    **ports,
                )
                sealed = runner.message
            except InvalidPayload as error:
                terminal.invalid_payload(error)
                return Ran(Failed("invalid_payload", str(error)), None, None)
            else:
                sealed = request.to_message(sealer)
                runner = IssueRunner(request=request, message=sealed, **ports)
        else:
            sealed = load_cancellation(message.payload)
            runner = CancelRunner(sealer=sealer, message=sealed, **ports)
        try:
            return Ran(runner.run(), runner.fence, sealed)
        except Abandoned:
            raise
        except Exception as error:
            # A port's error (a Redis error): the task retries later (tasks/receipts.py).
            self.violations.append(f"{message.task_id} raised {error!r}")
            raise

    def run_task(self, task_id: str) -> None:
        """A worker takes ``task_id``'s message that is due, and runs it to its end."""
        self.finish(self.deliver(next(m for m in self.due() if m.task_id == task_id)))

    def step(self, name: str) -> None:
        call = self.stepper.step(name)
        self.say(f"  {call}")
        self._reap(name)

    def finish(self, name: str, *, limit: int = 1000) -> None:
        """Let ``name`` run to the end of its message, or make ``limit`` calls."""
        for _ in range(limit):
            if not self.stepper.is_waiting(name):
                return
            self.step(name)

    def crash(self, name: str, *, redeliver: bool) -> None:
        """The worker running ``name`` dies at its gate; the broker redelivers its message,
        or (a Redis broker between BRPOP and its unacked record) loses it."""
        call = self.stepper.abandon(name)
        message = self.running.pop(name)
        self.say(
            f"{name} crashes before {call.port}.{call.method}"
            f"{'; redelivered' if redeliver else '; its message lost'}"
        )
        if redeliver:
            self._send(replace(message, eta=self.clock()))

    def duplicate(self, message: Message) -> None:
        """The broker delivers a message twice (a visibility timeout, a redelivery)."""
        self.say(f"the broker duplicates {message.task_id} (fence {message.fence})")
        self._send(replace(message, eta=self.clock()))

    def _reap(self, name: str) -> None:
        """A run that ended: its message is acked, or its retry is the next message."""
        if not self.stepper.done(name):
            return
        message = self.running.pop(name)
        try:
            ran: Ran = self.stepper.result(name)
        except Exception as error:  # noqa: BLE001 (recorded: the invariant check fails)
            self.say(f"{name} raised {error!r}")
            return
        instruction = ran.instruction
        self.say(f"{name} ends: {instruction}")
        payload = ran.message if ran.message is not None else message.payload
        if isinstance(instruction, Retry | Busy):
            delay = instruction.delay if isinstance(instruction, Retry) else BUSY_COUNTDOWN
            self._send(
                replace(
                    message,
                    payload=payload,
                    fence=ran.fence,
                    attempt=message.attempt + 1,
                    eta=self.clock() + delay,
                )
            )

    def waiting(self) -> list[str]:
        return sorted(self.stepper.waiting(), key=lambda name: int(name[1:]))

    def sending(self) -> bool:
        """Whether a runner is between reading the clock for a POST or DELETE and sending it.

        The clock does not jump there (see tests/integration/test_model.py): the send
        time is read and recorded before the request leaves, so a stall there would
        shorten the settling wait by its own length, which no bound can cover.
        """
        last: dict[str, str] = {}
        for call in self.stepper.trace:
            last[call.runner] = f"{call.port}.{call.method}"
        for name, pending in self.stepper.waiting().items():
            if (
                pending.port == "store"
                and pending.method in {"now", "note_sent"}
                and last.get(name)
                in {"provider.issue_receipt", "provider.cancel_receipt", "store.now"}
            ):
                return True
        return False

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        for provider in self.providers:
            provider.settle_due()
        self.say(f"the clock jumps {seconds:g} s")

    def sweep(self) -> int:
        return self.sweeper.sweep_once()

    def rerun_next_script(self) -> None:
        """The next script call (whoever makes it) runs twice: its first reply was lost."""
        self.rerunning.rerun += 1
        self.say("the next script call is re-run")

    def rotate(self) -> None:
        """A new key goes first everywhere (README, key rotation, step 1): every worker
        restarts with it, so the runs in hand are handed back (redelivered), and nothing
        is sealed under an old key from now on."""
        for name in self.waiting():
            self.crash(name, redeliver=True)
        self.keys.insert(0, Fernet.generate_key().decode())
        self.resealed = False
        self.say(f"keys rotate: {len(self.keys)} keys")

    def reseal(self) -> None:
        """``cashreceipt reseal`` (step 2): every kept payload under the newest key."""
        done = reseal(self.client, self.sealer)
        self.resealed = done.complete
        self.say(f"reseal: {done}")

    def drop_old_keys(self) -> None:
        """Only the newest key is kept (step 4; step 3 needs no wait: every message here
        comes from our producers, its job in the ledger)."""
        assert self.resealed, "the README drops a key only after a complete reseal"
        del self.keys[1:]
        self.say("old keys dropped")

    # -- what the oracles read -----------------------------------------------------------

    def events_by_task(self) -> dict[str, list[str]]:
        """The types of the events published for each task id, in order.

        Read from the stream as it grows (only the entries after those read before):
        the rules' preconditions ask for it at every step. :attr:`event_data` holds
        their data, in the same order.
        """
        for entry_id, fields in self.client.xrange(STREAM, min=f"({self._read_to}"):
            data = json.loads(fields["data"])
            self._events.setdefault(data["task_id"], []).append(fields["type"])
            self.event_data.setdefault(data["task_id"], []).append(data)
            if (data.get("error") or {}).get("reason") == PAYLOAD_UNREADABLE:
                self.unreadable.append(data["task_id"])
            self._read_to = entry_id
        return self._events

    def states(self) -> dict[JobKey, str | None]:
        records = {job: self.ledger.raw_record(job) for job in JOBS}
        return {job: (rec or {}).get("state") for job, rec in records.items()}

    def close(self) -> None:
        """Let every thread go: runners still waiting are crashed where they stand."""
        for name in list(self.stepper.waiting()):
            with contextlib.suppress(Exception):
                self.stepper.abandon(name)


# -- the invariants --------------------------------------------------------------------

TERMINAL_STATES = frozenset({"issued", "failed", "cancelled"})


def check_always(world: World) -> None:
    """The invariants after every step (tests/integration/test_model.py)."""
    for provider in world.providers:
        provider.settle_due()
    problems = [*world.provider.violations, *world.portone.violations, *world.violations]
    events = world.events_by_task()
    if world.unreadable:
        problems.append(
            f"payload_unreadable for {world.unreadable}, though every key went only after "
            "a complete reseal"
        )
    for task_id, kinds in events.items():
        task = world.tasks.get(task_id)
        if task is None:
            problems.append(f"an event for a task nobody sent: {task_id} {kinds}")
        elif len(kinds) > 1 and not (
            task.op == "cancel"
            and len(kinds) == 2
            and kinds[0] == CANCELLED
            and kinds[1] in {ISSUED, FAILED}
        ):
            problems.append(f"{task_id} ({task.op}) has {len(kinds)} terminal events: {kinds}")
    problems += sale_outcomes(world, events)
    assert not problems, _report(world, problems)


def check_quiet(world: World) -> None:
    """The invariants at quiescence, after :func:`drain`."""
    check_always(world)
    problems: list[str] = []
    events = world.events_by_task()
    for task_id, task in world.tasks.items():
        if task_id not in events:
            problems.append(f"{task_id} ({task.op} of {task.job.receipt_key}) ended in no event")
    for job, state in world.states().items():
        if state is not None and state not in TERMINAL_STATES:
            problems.append(f"the job of {job.receipt_key} is left {state}")
    if left := stuck(world.client, older_than=-1e9):
        problems.append(f"stuck lists {left}")
    recorded = [job for job, state in world.states().items() if state is not None]
    for job in list(recorded):
        view = world.ledger.view(job)
        if view is not None and view.state == "failed" and view.sent_at is not None:
            # Failed while its last request was unsettled (its lookups kept failing): a
            # receipt may be live. README: reconcile shows it, a replay settles it.
            world.say(f"{job.receipt_key} failed unsettled: left to reconcile and replay")
            recorded.remove(job)
        elif job in SALES and world.sale_failure(job) == ID_CONFLICT:
            # Failed finding another sale's receipt under the merchant_uid, live: reconcile
            # shows it for a human (sale_outcomes checks the receipt is for another amount).
            world.say(f"{job.receipt_key} failed as id_conflict: left to reconcile")
            recorded.remove(job)
    for found in reconcile(world.client, world.provider_of, recorded, sleep=lambda s: None):
        if isinstance(found, Mismatch):
            problems.append(f"the ledger disagrees with the provider: {found}")
        else:
            problems.append(f"reconcile could not check: {found}")
    assert not problems, _report(world, problems)


def sale_outcomes(world: World, kinds: dict[str, list[str]]) -> list[str]:
    """Each confirmation of an external sale (V1's, V2's) ended as the rules say (README,
    external receipts): a receipt issued once under the merchant_uid (the paymentId), and
    issued for this amount only; ``id_conflict`` for another amount only. A confirmation that
    overlapped another (waited on it, or was taken over by it) hears that one's outcome as a
    duplicate, whatever its amount. ``kinds``: :meth:`World.events_by_task`, as just read."""
    problems: list[str] = []
    for sale in SALES:
        problems += _sale_outcomes(world, kinds, sale)
    return problems


def _sale_outcomes(world: World, kinds: dict[str, list[str]], sale: JobKey) -> list[str]:
    sales = [task for task in world.tasks.values() if task.job == sale]
    if not sales:
        return []
    problems: list[str] = []
    receipts = world.provider_of(sale).receipts(sale)
    if len(receipts) > 1:
        problems.append(f"{len(receipts)} receipts under {sale.receipt_key}: {receipts}")
    live = receipts[-1] if receipts else None
    for task in sales:
        ended = world.event_data.get(task.task_id, [])
        if len(ended) != 1:
            continue  # no event yet, or more than one: check_always says so
        [data], [kind] = ended, kinds[task.task_id]
        excused = data["duplicate"] and task.overlapped
        shown = f"{task.task_id} (for {task.amount}) ended {kind}, duplicate {data['duplicate']}"
        if kind == ISSUED:
            receipt = data.get("receipt") or {}
            tid, amount = receipt.get("receipt_tid"), receipt.get("amount")
            if live is None or tid != live.receipt_tid:
                problems.append(f"{shown} with {tid}, which the provider does not hold: {live}")
            elif amount != task.amount and not excused:
                problems.append(f"{shown} with another sale's receipt, for {amount}")
        elif (data.get("error") or {}).get("reason") == ID_CONFLICT:
            if live is None:
                problems.append(f"{shown} as id_conflict, with no receipt under its id")
            elif live.amount == task.amount and not excused:
                problems.append(f"{shown} as id_conflict, though the receipt is for its amount")
    return problems


def drain(world: World, *, rounds: int = 60) -> None:
    """Run to quiescence: every message, every runner, the sweeper, the clock past leases.

    The faults queued still meet the next requests (they are few); the provider acts on
    every request it kept unanswered once its bound passes. What no call met is then
    dropped, so that the checks' own lookups meet none.
    """
    world.say("-- drain --")
    for _ in range(rounds):
        for _ in range(CALLS_PER_ROUND):
            for message in world.due():
                world.deliver(message)
            names = world.waiting()
            if not names:
                break
            for name in names:
                if world.stepper.is_waiting(name):
                    world.step(name)
        else:
            raise AssertionError(_report(world, [f"runners still run: {world.waiting()}"]))
        pending = bool(world.broker) or any(p.deferred for p in world.providers)
        open_jobs = any(s not in TERMINAL_STATES for s in world.states().values() if s)
        if not pending and not open_jobs:
            for provider in world.providers:
                provider.drop_faults()
            return
        world.advance(LEASE + 1)
        world.sweep()
    raise AssertionError(
        _report(
            world,
            [
                f"no quiescence after {rounds} rounds: "
                f"{world.states()}, {len(world.broker)} messages"
            ],
        )
    )


def _report(world: World, problems: list[str]) -> str:
    tail = world.log[-400:]
    return "\n".join(["", *problems, "-- what happened --", *tail])
