"""In-memory ports for the core: a V1-like provider, a job store, and its event stream.

The core's runner and rules (worker/core/) are unit-tested against these, with no
Celery, no Redis and no HTTP (as dramatiq tests against its StubBroker).

- :class:`MemoryProvider` models i'mport V1 as the core relies on it: one active
  receipt per payment (a second POST is a 400), the receipt lookup shows the newest
  receipt (active or cancelled), the payment keeps the cumulative refunded amount,
  and a receipt issued after a cancelled one replaces it in the lookup. An external
  receipt (``kind: external``) is kept by its receipt key, for the amount its POST
  asked; its merchant_uid is taken by any receipt, live or cancelled (the sandbox's
  default, re-issue refused), and it has no payment to read. Faults are
  scripted per call (:meth:`MemoryProvider.fail_next`): an error before the request
  is acted on, or an answer lost after it was (:data:`LOST`), or one the provider
  acts on only later (:data:`DEFERRED`, applied by :meth:`MemoryProvider.act_late`).
- :class:`MemoryStore` is the ledger's scripts (worker/lua/) transcribed: the same
  states, fields and fence checks, the waiters and the pending hand-overs, one
  terminal event per task id. Its clock is :class:`Clock`, which only a test moves;
  nothing expires (no TTLs).
- :class:`MemoryEvents` publishes into the store's stream, under the same markers.

Every call runs at once and alone; tests/support/stepping.py gates them to
interleave runners.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from worker.adapters.store.record import (
    answered_fields,
    cancelled_fields,
    job_view,
    sent_fields,
)
from worker.core.contract import EXTERNAL
from worker.core.errors import InvalidRequest, OutcomeUnknown, ProviderError
from worker.core.events import CANCEL_FAILED, WaiterEvent, job_fields, task_end_of, waiter_event
from worker.core.ports import Claim, ClaimKind, JobView, OperationId, Published, TaskEnd
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

TERMINAL = frozenset({"issued", "failed", "cancelled"})


class Clock:
    """Time that moves only when a test says so (epoch seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- the provider ----------------------------------------------------------------------

#: A fault: the request is acted on, then its answer is lost (OutcomeUnknown).
LOST = "lost"
#: A fault: no answer now (OutcomeUnknown); the provider acts on it at act_late().
DEFERRED = "deferred"


@dataclass
class _Payment:
    """A payment, by its imp_uid; or an external sale, by its receipt key (no payment)."""

    imp_uid: str
    amount: int
    cancel_amount: int = 0
    status: str = "paid"
    pay_method: str = "vbank"
    #: The receipts issued for it, oldest first (V1 shows only the newest).
    receipts: list[Receipt] = field(default_factory=list)


@dataclass(frozen=True)
class Call:
    """One request the provider received."""

    method: str
    imp_uid: str
    operation: OperationId | None = None


class MemoryProvider:
    """A V1-like provider in memory (see the module's docstring)."""

    name = "memory"
    #: A POST while a receipt is active is refused, as V1 does (False: a second one is
    #: issued, so that a double POST shows as two active receipts).
    refuses_second = True
    #: How long after a DEFERRED request arrived it is acted on at the latest (every
    #: call first acts on what is due, see settle_due()); None: only at act_late().
    late_bound: float | None = None
    #: Answers as V1 does: HTTP 200 and code 0.
    clean_answer: tuple[int | None, int | None] = (200, 0)

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._payments: dict[str, _Payment] = {}
        self._faults: dict[str, list[ProviderError | str | None]] = {}
        #: Requests it left unanswered and will still act on: (deadline, action).
        self._deferred: list[tuple[float, Callable[[], object]]] = []
        self._tids = 0
        #: Every request, in order: what a test asserts on.
        self.calls: list[Call] = []

    # -- the test's side ---------------------------------------------------------------

    def pay(self, imp_uid: str, amount: int = 1000, *, pay_method: str = "vbank") -> None:
        """A confirmed payment, without a receipt yet."""
        self._payments[imp_uid] = _Payment(imp_uid, amount, pay_method=pay_method)

    def refund(self, imp_uid: str, amount: int) -> None:
        """Part of the payment refunded at the provider (cumulative, as V1 keeps it)."""
        payment = self._payments[imp_uid]
        payment.cancel_amount += amount
        if payment.cancel_amount >= payment.amount:
            payment.status = "cancelled"

    def fail_next(self, method: str, *faults: ProviderError | str | None) -> None:
        """The next calls of ``method`` (``POST``, ``DELETE``, ``GET receipt``, ``GET payment``)
        meet these faults, in order: an error raised before anything is done, or
        :data:`LOST` or :data:`DEFERRED`; None lets a call through as it is."""
        self._faults.setdefault(method, []).extend(faults)

    def act_late(self) -> None:
        """The provider acts now on every request it deferred."""
        self._act_deferred(lambda deadline: True)

    def settle_due(self) -> None:
        """The provider acts on every deferred request whose :attr:`late_bound` has passed."""
        now = self._clock()
        self._act_deferred(lambda deadline: deadline <= now)

    @property
    def deferred(self) -> int:
        """How many requests it deferred and has not acted on yet."""
        return len(self._deferred)

    def _act_deferred(self, due: Callable[[float], bool]) -> None:
        acting = [action for deadline, action in self._deferred if due(deadline)]
        self._deferred = [entry for entry in self._deferred if not due(entry[0])]
        for action in acting:
            # A late POST refused (a receipt exists by then): nothing happens.
            with contextlib.suppress(ProviderError):
                action()
        self._acted()

    def _acted(self) -> None:
        """Called after acting on deferred requests: a subclass's watch."""

    def _defer(self, action: Callable[[], object]) -> None:
        """Leave ``action`` unanswered: acted on at act_late(), or once late_bound passed."""
        bound = self.late_bound
        self._deferred.append((self._clock() + bound if bound is not None else math.inf, action))

    def receipts(self, job: JobKey | str) -> list[Receipt]:
        """Every receipt the payment (or the external sale) ever had, oldest first."""
        return list(self._receipts_of(job))

    def active(self, job: JobKey | str) -> list[Receipt]:
        """The payment's (or the external sale's) active receipts (V1 allows at most one)."""
        return [r for r in self._receipts_of(job) if r.active]

    def sent(self, method: str) -> int:
        """How many requests of ``method`` were sent."""
        return sum(1 for call in self.calls if call.method == method)

    # -- the port ----------------------------------------------------------------------

    def issue_receipt(
        self,
        request: ReceiptOrder,
        *,
        operation: OperationId,
        on_send: Callable[[], None],
    ) -> Receipt:
        self.settle_due()
        on_send()
        self.calls.append(Call("POST", _name(request.job), operation))
        return self._changing("POST", lambda: self._issue(request))

    def cancel_receipt(
        self, job: JobKey | str, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        imp_uid = _name(job)
        self.settle_due()
        on_send()
        self.calls.append(Call("DELETE", imp_uid, operation))
        return self._changing("DELETE", lambda: self._cancel(imp_uid))

    def find_receipt(self, job: JobKey | str) -> Receipt | None:
        self.settle_due()
        self.calls.append(Call("GET receipt", _name(job)))
        self._fault("GET receipt")
        receipts = self._receipts_of(job)
        return receipts[-1] if receipts else None

    def list_receipts(self, job: JobKey | str) -> list[Receipt]:
        found = self.find_receipt(job)
        return [found] if found is not None else []

    def get_payment(self, imp_uid: str) -> Payment:
        self.settle_due()
        self.calls.append(Call("GET payment", imp_uid))
        self._fault("GET payment")
        payment = self._payment(imp_uid)
        return Payment(
            imp_uid=imp_uid,
            merchant_uid=None,
            pay_method=payment.pay_method,
            pg_provider="memory",
            status=payment.status,
            amount=payment.amount,
            cancel_amount=payment.cancel_amount,
            currency="KRW",
            cash_receipt_issued=any(r.active for r in payment.receipts),
            paid=payment.status == "paid",
            cash=payment.pay_method in {"vbank", "trans"},
        )

    # -- the model ---------------------------------------------------------------------

    def _payment(self, imp_uid: str) -> _Payment:
        payment = self._payments.get(imp_uid)
        if payment is None:
            raise InvalidRequest(f"no payment {imp_uid}", status=404)
        return payment

    def _receipts_of(self, job: JobKey | str) -> list[Receipt]:
        """The receipts a lookup reads: a payment's (404 for no payment), or an external
        sale's, named by its job or its receipt key (none before its first, as V1's 404 says)."""
        name = _name(job)
        named = JobKey.parse(name)
        if named is not None and named.kind == EXTERNAL:
            sale = self._payments.get(name)
            return sale.receipts if sale is not None else []
        return self._payment(name).receipts

    def _fault(self, method: str) -> ProviderError | str | None:
        queue = self._faults.get(method)
        if not queue:
            return None
        fault = queue.pop(0)
        if isinstance(fault, ProviderError):
            raise fault
        return fault

    def _changing(self, method: str, action: Callable[[], Receipt]) -> Receipt:
        fault = self._fault(method)
        if fault == DEFERRED:
            self._defer(action)
            raise OutcomeUnknown(f"{method}: read timeout; the outcome must be looked up")
        receipt = action()
        if fault == LOST:
            raise OutcomeUnknown(f"{method}: connection dropped; the outcome must be looked up")
        return receipt

    def _issue(self, request: ReceiptOrder) -> Receipt:
        if request.job.kind == EXTERNAL:
            return self._issue_external(request)
        imp_uid = _name(request.job)
        payment = self._payment(imp_uid)
        if self.refuses_second and any(r.active for r in payment.receipts):
            raise InvalidRequest("a cash receipt was already issued", status=400, code=-1)
        left = payment.amount - payment.cancel_amount
        if payment.status != "paid" or payment.pay_method not in {"vbank", "trans"} or left <= 0:
            raise InvalidRequest("no cash receipt for this payment", status=400, code=-1)
        return self._new_receipt(payment, left, imp_uid=imp_uid)

    def _issue_external(self, request: ReceiptOrder) -> Receipt:
        """An external receipt for the amount asked; its merchant_uid is taken by any receipt."""
        name = _name(request.job)
        amount = int(request.options["amount"])
        sale = self._payments.setdefault(name, _Payment(name, amount, status="external"))
        live = any(r.active for r in sale.receipts)
        if (live and self.refuses_second) or (sale.receipts and not live):
            raise InvalidRequest("this merchant_uid was already issued", status=400, code=-1)
        return self._new_receipt(sale, amount, merchant_uid=request.job.id)

    def _new_receipt(
        self,
        holder: _Payment,
        amount: int,
        *,
        imp_uid: str | None = None,
        merchant_uid: str | None = None,
    ) -> Receipt:
        self._tids += 1
        receipt = Receipt(
            imp_uid=imp_uid,
            receipt_tid=f"tid-{self._tids}",
            apply_num=str(100000 + self._tids),
            type="person",
            amount=amount,
            vat=amount // 11,
            receipt_url=None,
            applied_at=int(self._clock()),
            cancelled_at=0,
            merchant_uid=merchant_uid,
        )
        holder.receipts.append(receipt)
        return receipt

    def _cancel(self, imp_uid: str) -> Receipt:
        payment = self._payment(imp_uid)
        for index, receipt in enumerate(payment.receipts):
            if receipt.active:
                cancelled = replace(receipt, cancelled_at=int(self._clock()) or 1)
                payment.receipts[index] = cancelled
                return cancelled
        raise InvalidRequest("no cash receipt to cancel", status=400, code=-1)


# -- the job store ---------------------------------------------------------------------


def _partial(cancel: str | None) -> bool:
    """Whether a cancellation payload (JSON) is a partial refund (partial.lua)."""
    if not cancel:
        return False
    try:
        decoded = json.loads(cancel)
    except ValueError:
        return False
    if not isinstance(decoded, dict):
        return False
    amount = decoded.get("remaining_amount" if decoded.get("kind") == "external" else "amount")
    return isinstance(amount, int | float) and not isinstance(amount, bool)


def _recorded_partial(cancel: str | None) -> bool:
    """Whether a cancellation is a partial refund whose balance the worker records: an
    external receipt's or a PortOne V2 payment's (partial.lua)."""
    decoded = json.loads(cancel or "{}") if _partial(cancel) else {}
    return decoded.get("kind") == "external" or decoded.get("provider") == "portone"


@dataclass(frozen=True)
class Event:
    """One entry of the stream."""

    entry_id: str
    type: str
    data: dict[str, Any]


class MemoryStore:
    """The ledger's transitions in memory, as worker/lua/ makes them (see the module)."""

    def __init__(self, clock: Clock, *, lease_seconds: float = 30.0) -> None:
        self.clock = clock
        self.lease_ms = int(lease_seconds * 1000)
        self.records: dict[str, dict[str, str]] = {}
        self.due: dict[str, int] = {}
        self.dead: dict[str, int] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.waiters: dict[str, set[str]] = {}
        self.markers: dict[str, str] = {}
        self.status: dict[str, str] = {}
        self.stream: list[Event] = []
        self._seq = 0
        self.events = MemoryEvents(self)

    # -- the test's side ---------------------------------------------------------------

    def raw_record(self, job: JobKey | str) -> dict[str, str] | None:
        """The record as the ledger would keep it in Redis (its fields), or None."""
        imp_uid = _name(job)
        found = self.records.get(imp_uid)
        return dict(found) if found else None

    def task_end(self, task_id: str) -> TaskEnd | None:
        entry_id = self.markers.get(task_id)
        event = next((event for event in self.stream if event.entry_id == entry_id), None)
        return task_end_of({"type": event.type, "data": event.data}) if event else None

    def events_of(self, task_id: str) -> list[Event]:
        """The events published for ``task_id`` (one, once its message ended)."""
        return [event for event in self.stream if event.data.get("task_id") == task_id]

    # -- the port ----------------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def view(self, job: JobKey | str) -> JobView | None:
        imp_uid = _name(job)
        found = self.records.get(imp_uid)
        return (
            job_view(job if isinstance(job, JobKey) else JobKey.payment(job), found)
            if found
            else None
        )

    def receive(
        self, job: JobKey | str, *, task_id: str, payload: Mapping[str, Any], resend_after: float
    ) -> str:
        imp_uid = _name(job)
        now = self._now_ms()
        rec = self.records.get(imp_uid)
        state = rec.get("state") if rec else None
        owner = rec.get("task_id") if rec else None
        if task_id in self.markers or (state in TERMINAL and owner == task_id):
            return "done"
        if state and owner == task_id:
            return state
        reopen = state == "failed" or (state == "cancelled" and _partial(rec and rec.get("cancel")))
        if rec is not None and state and not reopen:
            if state in {"received", "in_flight"}:
                self.waiters.setdefault(imp_uid, set()).add(task_id)
                if rec.get("op") == "cancel" and _partial(rec.get("cancel")):
                    rec.update(
                        pending_issue_task=task_id,
                        pending_issue=json.dumps(payload),
                        pending_issue_due=str(now + int(resend_after * 1000)),
                    )
            return state
        rec = self.records.setdefault(imp_uid, {})
        if not state:
            rec.update(created_at=str(now), fence="0")
        due = now + int(resend_after * 1000)
        rec.update(
            state="received",
            task_id=task_id,
            payload=json.dumps(payload),
            op="issue",
            attempts="0",
            updated_at=str(now),
            next_attempt_at=str(due),
        )
        for name in ("last_error", "receipt", "lease_until", "cancel_step"):
            rec.pop(name, None)
        self.due[imp_uid] = due
        return "received"

    def receive_cancel(
        self, job: JobKey | str, *, task_id: str, cancel: Mapping[str, Any], resend_after: float
    ) -> str:
        imp_uid = _name(job)
        if task_id in self.markers:
            return "done"
        now = self._now_ms()
        text = json.dumps(cancel)
        rec = self.records.get(imp_uid)
        state, owner = (rec.get("state"), rec.get("task_id")) if rec else (None, None)
        if rec is not None and state and owner == task_id:
            return state
        if (
            rec is not None
            and state == "cancelled"
            and not (
                _partial(rec.get("cancel")) and (not _partial(text) or _recorded_partial(text))
            )
        ):
            return state
        due = now + int(resend_after * 1000)
        if rec is not None and state in {"received", "in_flight"}:
            earlier = rec.get("pending_cancel_task")
            if earlier and earlier != task_id:
                _cancel_waiter(rec, earlier)
            rec.update(
                pending_cancel_task=task_id, pending_cancel=text, pending_cancel_due=str(due)
            )
            return str(state)
        rec = self.records.setdefault(imp_uid, {})
        if not state:
            rec.update(created_at=str(now), fence="0")
        rec.update(
            state="received",
            op="cancel",
            task_id=task_id,
            cancel=text,
            attempts="0",
            updated_at=str(now),
            next_attempt_at=str(due),
        )
        for name in (
            "cancel_step",
            "lease_until",
            "pending_cancel_task",
            "pending_cancel",
            "pending_cancel_due",
        ):
            rec.pop(name, None)
        self.due[imp_uid] = due
        return "received"

    def claim(  # noqa: PLR0911, PLR0912 (claim.lua, branch for branch)
        self,
        job: JobKey | str,
        *,
        task_id: str,
        payload: Mapping[str, Any],
        op: str = "issue",
        fence: int | None = None,
    ) -> Claim:
        imp_uid = _name(job)
        if task_id in self.markers:
            return Claim(ClaimKind.DONE)
        now = self._now_ms()
        text = json.dumps(payload)
        rec = self.records.setdefault(imp_uid, {})
        state, owner = rec.get("state"), rec.get("task_id")
        if owner == task_id and state in TERMINAL:
            return Claim(ClaimKind.DONE)
        if (
            fence is not None
            and owner
            and owner != task_id
            and state in TERMINAL
            and task_id not in self.waiters.get(imp_uid, set())
        ):
            return Claim(ClaimKind.DONE)
        lease = int(rec.get("lease_until") or 0)
        attempts = int(rec.get("attempts") or 0)
        recorded_op = rec.get("op") or "issue"
        after_partial = _partial(rec.get("cancel"))
        if state == "issued" and op == "issue":
            return Claim(ClaimKind.ISSUED, receipt=_json(rec.get("receipt")))
        if state == "cancelled" and not (
            after_partial and (op == "issue" or not _partial(text) or _recorded_partial(text))
        ):
            return Claim(ClaimKind.CANCELLED, receipt=_json(rec.get("receipt")))
        if op == "issue" and recorded_op == "cancel" and state in {"in_flight", "received"}:
            if not after_partial:
                return Claim(ClaimKind.CANCELLED)
            return Claim(ClaimKind.BUSY)
        resumed = False
        if state == "in_flight":
            carried = "" if fence is None else str(fence)
            if lease > now and (owner != task_id or carried != rec.get("fence")):
                if op == "issue":
                    self.waiters.setdefault(imp_uid, set()).add(task_id)
                return Claim(ClaimKind.BUSY)
            resumed = True
        elif state == "received":
            resumed = attempts > 0
        elif state in TERMINAL:
            attempts = 0
            rec.pop("cancel_step", None)
        else:
            rec["created_at"] = str(now)
        if rec.get("sent_at"):
            resumed = True
        if (
            owner
            and owner != task_id
            and recorded_op == "issue"
            and state in {"in_flight", "received"}
        ):
            self.waiters.setdefault(imp_uid, set()).add(owner)
        elif (
            owner
            and owner != task_id
            and recorded_op == "cancel"
            and op == "cancel"
            and state in {"in_flight", "received"}
        ):
            _cancel_waiter(rec, owner)
            if rec.get("cancel_step") == "cancelled":
                rec["cancel_step"] = "inherited"  # that one's cancel step is not this one's
        if recorded_op != op and state in {"in_flight", "received"}:
            attempts = 0
        attempts += 1
        new_fence = int(rec.get("fence") or 0) + 1
        rec.update(
            fence=str(new_fence),
            state="in_flight",
            task_id=task_id,
            op=op,
            attempts=str(attempts),
            updated_at=str(now),
            lease_until=str(now + self.lease_ms),
        )
        if op == "issue":
            rec["payload"] = text
            rec.pop("receipt", None)
        else:
            rec["cancel"] = text
            if rec.get("pending_cancel_task") == task_id:
                for name in ("pending_cancel_task", "pending_cancel", "pending_cancel_due"):
                    rec.pop(name, None)
        rec.pop("next_attempt_at", None)
        self.dead.pop(imp_uid, None)
        self.due[imp_uid] = now + self.lease_ms
        return Claim(ClaimKind.CLAIMED, fence=new_fence, attempt=attempts, resumed=resumed, op=op)

    def extend(
        self, job: JobKey | str, *, fence: int, seconds: float, error: Mapping[str, Any]
    ) -> bool:
        imp_uid = _name(job)
        due = self._now_ms() + int(seconds * 1000) + self.lease_ms
        return self._hold(imp_uid, fence, due=due, state="in_flight", error=error)

    def park(
        self, job: JobKey | str, *, fence: int, until: float, error: Mapping[str, Any]
    ) -> bool:
        imp_uid = _name(job)
        return self._hold(imp_uid, fence, due=int(until * 1000), state="received", error=error)

    def _hold(
        self, imp_uid: str, fence: int, *, due: int, state: str, error: Mapping[str, Any]
    ) -> bool:
        rec = self.records.get(imp_uid) or {}
        if rec.get("state") != "in_flight" or rec.get("fence") != str(fence):
            return False
        now = self._now_ms()
        rec.update(state=state, updated_at=str(now), last_error=json.dumps(error))
        self._history(imp_uid, rec, now, outcome="retry", error=dict(error))
        if state == "received":
            rec["next_attempt_at"] = str(due)
            rec.pop("lease_until", None)
        else:
            rec["lease_until"] = str(due)
        self.due[imp_uid] = due
        return True

    def note_sent(
        self,
        job: JobKey | str,
        *,
        fence: int,
        at: float,
        op: str,
        delete: bool = False,
        operation: str | None = None,
    ) -> bool:
        imp_uid = _name(job)
        fields = sent_fields(at=at, op=op, delete=delete, operation=operation)
        return self._note(imp_uid, fence, fields)

    def stop_waiting(self, job: JobKey | str, task_id: str) -> None:
        self.waiters.get(_name(job), set()).discard(task_id)

    def note_answered(self, job: JobKey | str, *, fence: int) -> bool:
        imp_uid = _name(job)
        return self._note(imp_uid, fence, answered_fields())

    def note_cancelled(
        self,
        job: JobKey | str,
        *,
        fence: int,
        receipt: Receipt | None,
        balance: Mapping[str, Any] | None = None,
    ) -> bool:
        return self._note(_name(job), fence, cancelled_fields(receipt, balance))

    def _note(self, imp_uid: str, fence: int, fields: Mapping[str, str]) -> bool:
        rec = self.records.get(imp_uid) or {}
        if rec.get("state") != "in_flight" or rec.get("fence") != str(fence):
            return False
        rec.update(fields)
        return True

    def finish(  # noqa: PLR0912 (finish.lua, branch for branch)
        self,
        job: JobKey | str,
        *,
        fence: int,
        state: str,
        task_id: str,
        event_type: str,
        data: Mapping[str, Any],
        receipt: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        extra_event: tuple[str, Mapping[str, Any]] | None = None,
        settled: bool = False,
        to_waiter: bool = False,
    ) -> str | None:
        imp_uid = _name(job)
        rec = self.records.get(imp_uid) or {}
        if rec.get("state") != "in_flight" or rec.get("fence") != str(fence):
            return None
        now = self._now_ms()
        entry: dict[str, Any] = {}
        if error is not None:
            entry["error"] = dict(error)
        if extra_event is not None:
            entry["then"] = extra_event[0]
        self._history(imp_uid, rec, now, outcome=event_type, **entry)
        if state == "failed" or event_type == CANCEL_FAILED:
            self.dead[imp_uid] = now
        else:
            self.dead.pop(imp_uid, None)
        rec.update(state=state, updated_at=str(now))
        if receipt is not None:
            rec["receipt"] = json.dumps(dict(receipt))
        if error is not None:
            rec["last_error"] = json.dumps(dict(error))
        rec.pop("lease_until", None)
        rec.pop("next_attempt_at", None)
        if settled:
            rec.pop("sent_at", None)
        self.due.pop(imp_uid, None)
        _, entry_id = self._publish_once(task_id, event_type, dict(data), imp_uid)
        rec["event_id"] = entry_id
        if extra_event is not None:
            self._publish_once(f"{task_id}:2", extra_event[0], dict(extra_event[1]), imp_uid)
        template = waiter_event(
            state=state, event_type=event_type, data=data, extra_event=extra_event
        )
        owner = rec.get("task_id")
        pending = dict(rec)

        def to_cancel() -> str | None:
            if self._hand_over(
                imp_uid,
                rec,
                pending.get("pending_cancel_task"),
                "cancel",
                "cancel",
                pending.get("pending_cancel"),
                pending.get("pending_cancel_due"),
            ):
                self.dead.pop(imp_uid, None)
                return "cancel"
            return None

        def to_issue() -> str | None:
            if self._hand_over(
                imp_uid,
                rec,
                pending.get("pending_issue_task"),
                "issue",
                "payload",
                pending.get("pending_issue"),
                pending.get("pending_issue_due"),
            ):
                rec.pop("receipt", None)
                self.dead.pop(imp_uid, None)
                return "issue"
            return None

        def end_waiters(live: str | None, spare: str | None) -> None:
            for waiter in sorted(self.waiters.get(imp_uid, set())):
                if waiter not in {owner, spare}:
                    self._publish_waiter(waiter, template, entry_id, live, imp_uid)
            self.waiters.pop(imp_uid, None)
            if spare:
                self.waiters[imp_uid] = {spare}

        def echo(waiter: str | None) -> None:
            """finish.lua's ``echo``: the owner's first event, a duplicate, for ``waiter``."""
            if not waiter or waiter in self.markers:
                return
            copied = {**data, "task_id": waiter, "duplicate": True}
            copied["event_id"] = hashlib.sha1((waiter + entry_id).encode()).hexdigest()  # noqa: S324
            self._publish_once(waiter, event_type, copied, imp_uid)

        if pending.get("op") == "cancel":
            for waiter in json.loads(pending.get("cancel_waiters") or "[]"):
                echo(waiter)
            rec.pop("cancel_waiters", None)
        successor: str | None = None
        if to_waiter and self._to_waiter(imp_uid, rec, state, now + self.lease_ms):
            successor = "issue"  # the job is in hand again: its waiters stay
        elif state == "issued":
            end_waiters(rec.get("receipt"), None)
            successor = to_cancel()
        elif state == "failed":
            successor = to_cancel()
            if successor:
                end_waiters(rec.get("receipt"), pending.get("pending_issue_task"))
            else:
                successor = to_issue()
                if not successor:
                    end_waiters(rec.get("receipt"), None)
        elif state == "cancelled":
            if _partial(pending.get("cancel")):
                successor = to_issue() or to_cancel()
            else:
                end_waiters(None, None)
                echo(pending.get("pending_cancel_task"))
        if successor != "issue":
            for name in ("pending_cancel_task", "pending_cancel", "pending_cancel_due"):
                rec.pop(name, None)
        if successor != "cancel" or state != "failed":
            for name in ("pending_issue_task", "pending_issue", "pending_issue_due"):
                rec.pop(name, None)
        return entry_id

    # -- the scripts' fragments --------------------------------------------------------

    def _to_waiter(self, imp_uid: str, rec: dict[str, str], state: str, due: int) -> bool:
        """finish.lua's ``to_waiter``: a failure the owner's alone hands the job on."""
        payload, owner = rec.get("payload"), rec.get("task_id")
        if state != "failed" or not payload:
            return False
        waiters = self.waiters.get(imp_uid, set())
        for waiter in sorted(waiters):
            if waiter != owner and self._hand_over(
                imp_uid, rec, waiter, "issue", "payload", payload, str(due)
            ):
                waiters.discard(waiter)
                waiters.discard(owner or "")
                self.dead.pop(imp_uid, None)
                return True
        return False

    def _hand_over(
        self,
        imp_uid: str,
        rec: dict[str, str],
        task_id: str | None,
        op: str,
        field_name: str,
        value: str | None,
        due: str | None,
    ) -> bool:
        if not task_id or task_id in self.markers:
            return False
        rec.update(
            {
                "state": "received",
                "op": op,
                "task_id": task_id,
                field_name: value or "",
                "attempts": "0",
                "next_attempt_at": due or "0",
            }
        )
        rec.pop("cancel_step", None)
        self.due[imp_uid] = int(due or 0)
        return True

    def _history(
        self, imp_uid: str, rec: Mapping[str, str], now: int, *, outcome: str, **more: Any
    ) -> None:
        entry = {
            "at": now,
            "op": rec.get("op") or "issue",
            "attempt": int(rec.get("attempts") or 0),
            "outcome": outcome,
            **more,
        }
        self.history.setdefault(imp_uid, []).insert(0, entry)
        del self.history[imp_uid][50:]

    def _publish_waiter(
        self,
        waiter: str,
        template: WaiterEvent,
        owner_entry_id: str,
        live: str | None,
        imp_uid: str,
    ) -> None:
        """finish.lua's ``waiter_data``: the core's template, its identity, the live receipt."""
        data = {**template.data, "task_id": waiter}
        data["event_id"] = hashlib.sha1((waiter + owner_entry_id).encode()).hexdigest()  # noqa: S324
        if template.live_receipt:
            data["receipt"] = json.loads(live) if live else None
        self._publish_once(waiter, template.event_type, data, imp_uid)

    def _publish_once(
        self, task_id: str, event_type: str, data: dict[str, Any], imp_uid: str | None
    ) -> tuple[bool, str]:
        seen = self.markers.get(task_id)
        if seen is not None:
            return False, seen
        self._seq += 1
        entry_id = f"{self._now_ms()}-{self._seq}"
        self.stream.append(Event(entry_id, event_type, data))
        self.markers[task_id] = entry_id
        if imp_uid:
            self.status[imp_uid] = entry_id
        return True, entry_id


class MemoryEvents:
    """The event publisher port, publishing into a :class:`MemoryStore`'s stream."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def publish_terminal(
        self,
        *,
        event_type: str,
        task_id: str,
        job: JobKey | None,
        merchant_uid: str | None,
        attempts: int,
        duplicate: bool,
        detail: Mapping[str, Any],
    ) -> Published:
        imp_uid = job.imp_uid if job is not None else None
        data = {
            **job_fields(job),
            "merchant_uid": merchant_uid,
            "task_id": task_id,
            "attempts": attempts,
            "duplicate": duplicate,
            **detail,
        }
        new, entry_id = self._store._publish_once(task_id, event_type, data, imp_uid)
        return Published(entry_id=entry_id, new=new)


def _cancel_waiter(rec: dict[str, str], task_id: str) -> None:
    """The cancel_waiter.lua fragment: ``task_id`` ends with the job's next cancellation.

    The list is kept as Redis's cjson encodes it: no spaces, and ``/`` escaped.
    """
    waiting = [*json.loads(rec.get("cancel_waiters") or "[]"), task_id]
    rec["cancel_waiters"] = json.dumps(waiting, separators=(",", ":"), ensure_ascii=False).replace(
        "/", "\\/"
    )


def _json(text: str | None) -> dict[str, Any] | None:
    return json.loads(text) if text else None


def _name(job: JobKey | str) -> str:
    """What the records are keyed by: a V1 payment's imp_uid (as the tests name one), or
    another kind's receipt key."""
    if isinstance(job, str):
        return job
    return job.imp_uid if job.imp_uid is not None else job.receipt_key
