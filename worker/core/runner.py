"""The job runner: claim, wait out an unsettled send, look, act, then retry or finish.

One runner is one task message's run of one job (an issue, or a refund). It
talks only to the ports (:mod:`worker.core.ports`): the job store, the
provider, and, through :class:`~worker.core.terminal.TerminalPublisher`, the
events. It reads no clock but the store's, sleeps nowhere and raises no Celery
exception: :meth:`JobRunner.run` returns an :data:`Instruction`, which the
Celery task (tasks/receipts.py) carries out:

- :class:`Done`: the run ended with this :class:`~worker.core.outcome.Outcome`
  (its event is out, or the job went back to the store for a long wait);
- :class:`Failed`: the job failed for good, its failure event is out;
- :class:`Retry`: hand the job on to a new message after ``delay`` seconds,
  carrying :attr:`JobRunner.fence` (a short countdown; the store holds the
  claim meanwhile);
- :class:`Busy`: another task holds the job; call :meth:`JobRunner.run` again
  later (the task polls, within a bound), or retry.

Anything else a port raises (a Redis error, a shutdown's hand-back) goes
through to the caller as it is; :attr:`JobRunner.fence` then says which claim
the run held, if any.

Every port call is a point where a test can stop the runner
(tests/support/stepping.py), so runners can be interleaved one call at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from worker.core.budget import MAX_PROVIDER_CALLS_PER_ATTEMPT, BudgetedProvider, BudgetSpent
from worker.core.contract import EXTERNAL, PAYMENT, PORTONE
from worker.core.errors import IdConflict, OutcomeUnknown, ProviderError, TransientError
from worker.core.events import CANCELLED_MESSAGE, invalid_detail, no_payload_detail
from worker.core.issuing import (
    Issued,
    SendLog,
    Superseded,
    issue_receipt,
    payment_first,
    settle_delay,
    settle_issue,
)
from worker.core.outcome import Outcome
from worker.core.ports import (
    Claim,
    ClaimKind,
    JobStore,
    JobView,
    OperationId,
    Provider,
    TaskEnd,
    Unsealer,
    kept_generation,
)
from worker.core.refunds import (
    balance_request,
    cancel_live_receipt,
    payment_refund,
    receipt_covering,
    receipt_for_balance,
    recorded_refund,
    settle_cancel,
)
from worker.core.retry import (
    ID_CONFLICT,
    Decision,
    RetryPolicy,
    decide,
    settle_before_failing,
    settling_attempt,
)
from worker.core.schemas import (
    PAYLOAD_UNREADABLE,
    InvalidPayload,
    PayloadUnreadable,
    ReceiptRequest,
    load_payload,
    partial_refund,
    payload_job,
    readable_job,
)
from worker.core.terminal import TerminalPublisher, error_detail, failure_message
from worker.core.types import JobKey, Receipt

#: Why a resumed job waits before it looks: its last POST or DELETE is unsettled.
_SETTLING = "i'mport may still act on the last request; looking after IAMPORT_SETTLE_SECONDS"
#: Why a POST waits: i'mport may still act on the payment's last DELETE (issue 14, finding 14).
_DELETE_SETTLING = (
    "i'mport may still act on the payment's last DELETE, and cancel what a POST issues now; "
    "posting after IAMPORT_SETTLE_SECONDS"
)
#: What the failure event of a payload no configured key opens says.
UNREADABLE_MESSAGE = (
    "the payload's sealed fields open with no configured key (PII_ENCRYPTION_KEYS): "
    "configure the key that sealed them again, then replay the job"
)
#: Why an attempt stopped short: one more call would pass the time rule's bound.
_BUDGET = "the attempt made as many requests as one may; the job goes on in the next"


@dataclass(frozen=True)
class Rules:
    """What the runner needs from the configuration."""

    policy: RetryPolicy
    #: IAMPORT_SETTLE_SECONDS: how long after sending the provider may still act on a request.
    settle_seconds: float
    #: RETRY_COUNTDOWN_MAX: a longer wait goes back to the store (parked), not to a countdown.
    countdown_max: float
    #: The most provider calls one attempt makes (the time rule counts on it).
    calls_per_attempt: int = MAX_PROVIDER_CALLS_PER_ATTEMPT


@dataclass(frozen=True)
class Done:
    """The run ended: ``outcome``, and for a parked job or a failed re-issue its ``reason``."""

    outcome: Outcome
    reason: str | None = None


@dataclass(frozen=True)
class Failed:
    """The job failed for good and its failure event is out; ``text`` is masked."""

    reason: str
    text: str


@dataclass(frozen=True)
class Retry:
    """Hand the job on to a new message in ``delay`` seconds, with the run's fence."""

    delay: float
    cause: str


@dataclass(frozen=True)
class Busy:
    """Another task holds the job: run again later, or retry."""


Instruction = Done | Failed | Retry | Busy


def error_cause(error: ProviderError) -> str:
    """A retry's cause for its log line and metric label: the error's class, in snake case."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(error).__name__).lower()


class JobRunner:
    """One message's run of one job. Subclasses: :class:`IssueRunner`, :class:`CancelRunner`."""

    op = "issue"

    def __init__(
        self,
        *,
        store: JobStore,
        provider: Provider,
        terminal: TerminalPublisher,
        rules: Rules,
        job: JobKey,
        message: dict[str, Any],
        carried_fence: int | None = None,
        attempt: int = 1,
    ) -> None:
        self.store = store
        #: Counts each attempt's calls, and refuses the one past the bound.
        self.budget = BudgetedProvider(provider, limit=rules.calls_per_attempt)
        self.provider: Provider = self.budget
        self.terminal = terminal
        self.rules = rules
        #: The job, as the store and the provider name it.
        self.job = job
        #: The payload as the store keeps it and a retry re-publishes it (sealed).
        self.message = message
        #: The fence the message carries (a retry's, a sweeper re-send's), or None.
        self.carried_fence = carried_fence
        #: The job's attempt number, once claimed.
        self.attempt = attempt
        #: The fence of the claim this run holds, handed on to its retry; None: none.
        self.fence: int | None = None
        #: What the provider last said in this run: HTTP status and code (None: no answer).
        self.provider_status: int | None = None
        self.provider_code: int | None = None
        #: Receipts that appeared after a settled lookup (counted for an alert).
        self.late = 0
        #: When the job's last POST or DELETE was sent, while unanswered (epoch s) ...
        self.sent_at: float | None = None
        #: ... by which operation (None: unrecorded, the job's own) ...
        self.sent_op: str | None = None
        #: ... as which step and generation (OperationId.sent; None: unrecorded) ...
        self.sent_operation: str | None = None
        #: ... and whether this run sent it (not adopted from the store).
        self.sent_here = False
        self._acted = False

    def run(self) -> Instruction:
        """Claim the job and act as its owner; :class:`Busy` while another task holds it."""
        while True:
            claim = self.store.claim(
                self.job,
                task_id=self.terminal.task_id,
                payload=self.message,
                op=self.op,
                fence=self.carried_fence,
            )
            if claim.kind is ClaimKind.CLAIMED:
                self.attempt = claim.attempt
                self.fence = claim.fence
                if self._acted:
                    # One attempt per message, so that a message's time stays within
                    # the visibility timeout (celeryconfig's time rule): the job is
                    # handed on to a new message of this task, with its fence.
                    return Retry(0.0, "handed_on")
                self._acted = True
                instruction = self.attempt_once(claim)
                if instruction is not None:
                    return instruction
                self.fence = None
                continue  # fenced out: another task took the job over; report its outcome
            if claim.kind is ClaimKind.DONE:
                ended = self.store.task_end(self.terminal.task_id)
                if ended is not None and reused(ended, job=self.job, op=self.op):
                    return Done(Outcome.REUSED, reason=TASK_ID_REUSED)
                return Done(Outcome.DONE)  # a redelivery: this task already published
            if claim.kind is not ClaimKind.BUSY:
                return self.settled(claim)
            return self.busy()

    def attempt_once(self, claim: Claim) -> Instruction | None:
        """The claimed attempt: act, unless the job's last request is not settled yet.

        A retry, a takeover after a crash and a redelivery all come here: their
        lookup must wait until the provider can no longer act on the job's last
        POST or DELETE, or it would prove nothing. None: another task owns the job now.
        An attempt that would make more calls than the bound is handed on before that
        call (:mod:`worker.core.budget`).
        """
        self.budget.reset()
        try:
            if claim.resumed:
                # The job's last POST or DELETE, while unsettled: this run's until it sends.
                job = self.store.view(self.job)
                self.sent_at = job.sent_at if job else None
                self.sent_op = job.sent_op if job else None
                self.sent_operation = job.sent_operation if job else None
                wait = settle_delay(
                    self.sent_at, bound=self.rules.settle_seconds, now=self.store.now()
                )
                if wait > 0:
                    return self.hand_back(claim, OutcomeUnknown(_SETTLING), wait)
            return self.act(replace(self.terminal, attempts=claim.attempt), claim)
        except Superseded:
            return None
        except BudgetSpent:
            return self.hand_back(claim, ProviderError(_BUDGET), 0.0, cause="request_budget")

    def act(self, terminal: TerminalPublisher, claim: Claim) -> Instruction | None:
        raise NotImplementedError

    def settled(self, claim: Claim) -> Instruction:
        raise NotImplementedError

    def busy(self) -> Instruction:
        """Another task holds the job: wait on it, and hear its outcome."""
        return Busy()

    def hand_back(
        self, claim: Claim, error: ProviderError, delay: float, *, cause: str | None = None
    ) -> Instruction | None:
        """Retry later: a short countdown, or, for a long wait, park the job in the store.

        While the job's last POST or DELETE is unsettled, no sooner than the
        bound on late processing after it was sent: the retry's first step is
        the lookup that settles it. ``cause`` names the retry (by default the
        error's class). None: fenced out.
        """
        bound = self.rules.settle_seconds
        delay = max(delay, settle_delay(self.sent_at, bound=bound, now=self.store.now()))
        last = error_detail(error, "retrying")["error"]
        # No countdown is longer than RETRY_COUNTDOWN_MAX, nor one a Retry-After set longer
        # than RETRY_BACKOFF_MAX: the visibility timeout covers only the smaller of the two.
        retry_after = error.retry_after if isinstance(error, TransientError) else None
        if delay > self.rules.countdown_max or (
            retry_after is not None and retry_after > self.rules.policy.backoff_max
        ):
            until = self.store.now() + delay
            self.store.park(self.job, fence=claim.fence, until=until, error=last)
            return Done(Outcome.PARKED, reason=cause or error_cause(error))
        if not self.store.extend(self.job, fence=claim.fence, seconds=delay, error=last):
            return None
        return Retry(delay, cause or error_cause(error))

    def delete_wait(self) -> float:
        """Seconds before this attempt may POST: 0, or the rest of the bound after a DELETE.

        A DELETE an earlier attempt sent (any refund of the payment, answered or not)
        may still be acted on late, and would cancel the receipt a POST issues now. So
        no POST goes out until the bound on late processing has passed since the last
        DELETE; until then the job waits as for its own unsettled send (:meth:`hand_back`).
        """
        job = self.store.view(self.job)
        last_delete = job.delete_sent_at if job else None
        return settle_delay(last_delete, bound=self.rules.settle_seconds, now=self.store.now())

    def wait_out_delete(self, claim: Claim, wait: float) -> Instruction | None:
        """Hand the job back until it may POST (:meth:`delete_wait`); None: fenced out."""
        error = OutcomeUnknown(_DELETE_SETTLING)
        return self.hand_back(claim, error, wait, cause="delete_settling")

    def answered(self, error: ProviderError | None = None) -> None:
        """What the provider last said in this run: its HTTP status and code."""
        if error is None:
            self.provider_status, self.provider_code = self.provider.clean_answer
        else:
            self.provider_status, self.provider_code = error.status, error.code

    def decision(self, error: ProviderError, claim: Claim) -> Decision:
        """Retry or give up; never give up while the job's last request is unsettled."""
        policy = self.rules.policy
        return settle_before_failing(
            decide(error, attempt=claim.attempt, policy=policy),
            unsettled=self.sent_at is not None,
            attempt=claim.attempt,
            policy=policy,
            sent_here=self.sent_here,
        )

    def failed(
        self, error: ProviderError, claim: Claim, give_up: Callable[[str], Instruction | None]
    ) -> Instruction | None:
        """A provider error: hand the job back to retry, or give up for good through
        ``give_up``, with the reason; None: fenced out."""
        self.answered(error)
        decision = self.decision(error, claim)
        if decision.retry:
            return self.hand_back(claim, error, decision.delay)
        return give_up(decision.reason or "rejected")

    def settling(self, claim: Claim) -> bool:
        """Whether this attempt only looks: the budget is spent, and the job's last request,
        one this operation sent, is unsettled. A refund that took over an issue whose POST
        is unsettled has waited it out; it looks, then DELETEs what it finds live."""
        own = self.sent_op in (None, self.op)
        return settling_attempt(
            unsettled=self.sent_at is not None and own,
            attempt=claim.attempt,
            policy=self.rules.policy,
        )

    def sends(
        self, claim: Claim, *, delete: bool = False, operation: OperationId | None = None
    ) -> SendLog:
        """The store as this run's :class:`~worker.core.issuing.SendLog`, under its fence
        (``delete``: the request it logs is a DELETE; ``operation``: which request)."""
        return _StoreSends(self, claim.fence, delete=delete, operation=operation)

    def operation(self, step: str, claim: Claim) -> OperationId:
        """The id of a request this claim sends (``step``: issue, cancel or reissue): the
        job's unsettled request of that step again, under its generation; else a new
        one, under this claim's fence."""
        kept = kept_generation(self.sent_operation, step) if self.sent_at is not None else None
        return OperationId(job=self.job, step=step, generation=kept or claim.fence)

    def count_late(self, issued: Issued) -> None:
        """A receipt that appeared after a settled lookup: counted for the alert."""
        if issued.late:
            self.late += 1


class _StoreSends:
    """A run's POST and DELETE send times, kept in its job's record under its fence."""

    def __init__(
        self,
        run: JobRunner,
        fence: int,
        *,
        delete: bool = False,
        operation: OperationId | None = None,
    ) -> None:
        self._run, self._fence, self._delete = run, fence, delete
        self._operation = operation.sent if operation is not None else None

    def sending(self) -> None:
        run = self._run
        now = run.store.now()
        if not run.store.note_sent(
            run.job,
            fence=self._fence,
            at=now,
            op=run.op,
            delete=self._delete,
            operation=self._operation,
        ):
            raise Superseded  # fenced out: the job's new owner sends, not this run
        run.sent_at, run.sent_op, run.sent_here = now, run.op, True

    def answered(self) -> None:
        run = self._run
        run.sent_at, run.sent_here = None, False
        run.store.note_answered(run.job, fence=self._fence)


#: Why a message is set aside unrun: its task id ended as another job's or operation's.
TASK_ID_REUSED = "task_id_reused"


def reused(ended: TaskEnd, *, job: JobKey, op: str) -> bool:
    """Whether a message of ``job`` and ``op`` is another message than the one that ended
    its task as ``ended``: its task id was reused (the same task again is not)."""
    other_job = ended.receipt_key is not None and ended.receipt_key != job.receipt_key
    return other_job or ended.op != op


def issue_settled(
    terminal: TerminalPublisher,
    claim: Claim,
    *,
    message: Mapping[str, Any] | None = None,
    sealer: Unsealer | None = None,
) -> Instruction:
    """An issue message found its job ended: a duplicate of the receipt, or a stale one.

    ``message``: the issue's payload. An external receipt's names the merchant's own id,
    which merchants reuse: a job that issued under it for another sale (another total,
    or, as far as the job's kept payload tells with ``sealer``, another buyer or another
    tax-free part) is not this message's duplicate but an ``id_conflict``.
    """
    if claim.kind is ClaimKind.ISSUED:
        conflict = _another_sale(terminal, claim, message, sealer)
        if conflict is not None:
            terminal.id_conflict(conflict)
            return Failed(ID_CONFLICT, f"{ID_CONFLICT}: {conflict}")
        terminal.issued_duplicate(claim.receipt or {})
        return Done(Outcome.ISSUED_DUPLICATE)
    # cancelled: a stale issue message never issues again.
    terminal.refused("cancelled", CANCELLED_MESSAGE)
    return Failed("cancelled", f"cancelled: {CANCELLED_MESSAGE}")


def _another_sale(
    terminal: TerminalPublisher,
    claim: Claim,
    message: Mapping[str, Any] | None,
    sealer: Unsealer | None,
) -> str | None:
    """Why an external receipt's ended job is another sale than ``message`` asks for; None:
    the same sale (or a payment's job, whose receipt is the payment's whatever it says).

    The amount is compared with the receipt's, and with the total the job's kept payload
    was confirmed for (after a partial refund the receipt is the balance's). The buyer's
    identifier and the tax-free part are compared with the kept payload when both open.
    """
    view = terminal.store.view(terminal.job) if terminal.job is not None else None
    kept_payload = view.payload if view is not None else None
    issued = (claim.receipt or {}).get("amount")
    return another_sale(kept_payload, message or {}, sealer, issued=issued)


def another_sale(
    kept_payload: Mapping[str, Any] | None,
    message: Mapping[str, Any],
    sealer: Unsealer | None,
    *,
    issued: int | None = None,
) -> str | None:
    """Why ``message`` is another sale than the one its job keeps (``kept_payload``, and
    the receipt it ``issued``, if any); None: the same sale, or a V1 payment's job.

    For a merchant's own id (a V1 external receipt's merchant_uid, a PortOne V2 payment
    id of either kind): another kind under a V2 payment id, another amount, and, as far
    as both payloads open with ``sealer``, another buyer or another tax-free part.
    """
    wanted = own_id_amount(message)
    if wanted is None:
        return None
    portone = message.get("provider") == PORTONE
    name = "payment id" if portone else "merchant_uid"
    another = f"another sale's; issue this one under another {name}"
    kept_kind = (kept_payload or {}).get("kind", PAYMENT)
    if portone and kept_payload and kept_kind != message.get("kind", PAYMENT):
        return f"this {name} already names a receipt of kind {kept_kind}: {another}"
    if wanted not in (issued, (kept_payload or {}).get("amount")):
        shown = issued if issued is not None else (kept_payload or {}).get("amount")
        return f"this {name} already carries a receipt for {shown} won, not {wanted}: {another}"
    # Opened only now: the amounts tell most sales apart without a decryption.
    kept, asked = _opened(kept_payload, sealer), _opened(message, sealer)
    if kept is not None and asked is not None:
        if kept.identifier != asked.identifier:
            return (
                f"this {name} already carries a receipt for another buyer's identifier: {another}"
            )
        if kept.options.get("tax_free") != asked.options.get("tax_free"):
            return f"this {name} already carries a receipt with another tax-free part: {another}"
    return None


def _opened(payload: Mapping[str, Any] | None, sealer: Unsealer | None) -> ReceiptRequest | None:
    """A payload opened and validated, or None when it is absent or cannot be read."""
    if payload is None or sealer is None:
        return None
    try:
        return load_payload(payload, sealer)
    except InvalidPayload:
        return None


def cancel_settled(terminal: TerminalPublisher, claim: Claim) -> Instruction:
    """A cancellation found its job cancelled already: it repeated one that happened."""
    terminal.cancelled_duplicate(claim.receipt)
    return Done(Outcome.CANCELLED_DUPLICATE)


def settled_message(
    terminal: TerminalPublisher,
    claim: Claim,
    message: Mapping[str, Any],
    sealer: Unsealer | None = None,
) -> Instruction:
    """A message of ``claim.op`` whose job has ended so that it has nothing to do: its event.

    The producer ends so, at once, a task the ledger answered ``issued`` or
    ``cancelled`` for and did not record; a worker whose message meets such a job ends
    it the same way, so the task's one event is the same whichever comes first.
    """
    if claim.op == "cancel":
        return cancel_settled(terminal, claim)
    return issue_settled(terminal, claim, message=message, sealer=sealer)


def own_id_amount(message: Mapping[str, Any]) -> int | None:
    """The amount a message asks for, when its id is one a merchant may reuse for another
    sale (a V1 external receipt's, any PortOne V2 payment id); None for a V1 payment's."""
    amount = message.get("amount")
    own = message.get("kind") == EXTERNAL or message.get("provider") == PORTONE
    return amount if own and isinstance(amount, int) else None


def issue_request(
    raw: object, *, sealer: Unsealer, store: JobStore, task_id: str
) -> ReceiptRequest:
    """An issue message's payload, opened; else the one its job keeps.

    The job's kept payload is re-sealed under the newest key by ``cashreceipt
    reseal``; the message in the broker is not. So a message (a producer's, a
    retry's, a waiter's) whose key was dropped after the re-seal runs from its
    job's copy: when this task owns the job, or when the job is still open (a
    waiter's: the open job issues that payload whichever of its messages runs, and
    the waiter would end with that receipt anyway, so no identifier is issued that
    the job would not have issued). A job that ended under another task lends its
    payload to no one: the message may ask for another identifier than the one that
    failed, and nobody can read which. Raises
    :class:`~worker.core.schemas.PayloadUnreadable` when no copy opens, and
    :class:`~worker.core.schemas.InvalidPayload` for a malformed one.
    """
    try:
        return load_payload(raw, sealer)
    except PayloadUnreadable:
        named = readable_job(raw)
        job = store.view(named) if named is not None else None
        if job is None or job.op != "issue" or job.payload is None:
            raise
        if job.task_id != task_id and not job.is_open:
            raise
        kept = load_payload(job.payload, sealer)
        if kept.job != named:
            raise
        return kept


class IssueRunner(JobRunner):
    """``issue_cash_receipt``: make sure the payment has its one receipt."""

    def __init__(
        self,
        *,
        request: ReceiptRequest,
        store: JobStore,
        provider: Provider,
        terminal: TerminalPublisher,
        rules: Rules,
        message: dict[str, Any],
        carried_fence: int | None = None,
        attempt: int = 1,
        sealer: Unsealer | None = None,
    ) -> None:
        super().__init__(
            store=store,
            provider=provider,
            terminal=terminal,
            rules=rules,
            job=request.job,
            message=message,
            carried_fence=carried_fence,
            attempt=attempt,
        )
        self.request = request
        #: Opens the job's kept payload, to tell another sale under a reused id.
        self.sealer = sealer

    def settled(self, claim: Claim) -> Instruction:
        return issue_settled(self.terminal, claim, message=self.message, sealer=self.sealer)

    def busy(self) -> Instruction:
        """Another task holds the job. For the same sale, wait and hear its outcome. For
        another sale under the same id (another kind, amount, buyer or tax-free part),
        that outcome would be another sale's: this message stops waiting, and claims
        again when it comes back. Then the job has ended, and the rules of an ended job
        judge it: ``id_conflict`` beside the other sale's receipt, or this sale issued
        if the other one failed."""
        job = self.store.view(self.job)
        if job is None or job.op != "issue" or job.task_id == self.terminal.task_id:
            return Busy()
        if another_sale(job.payload, self.message, self.sealer) is not None:
            self.store.stop_waiting(self.job, self.terminal.task_id)
        return Busy()

    def give_up(
        self, terminal: TerminalPublisher, claim: Claim, error: ProviderError, reason: str
    ) -> Instruction | None:
        """The issue failed for good: its failure event; None: fenced out."""
        if not terminal.finish(fence=claim.fence, error=error, reason=reason):
            return None
        return Failed(reason, f"{reason}: {failure_message(error)}")

    def act(  # noqa: PLR0911 (one return per way an attempt ends)
        self, terminal: TerminalPublisher, claim: Claim
    ) -> Instruction | None:
        """Issue as the job's owner; None when another task took the job over meanwhile."""
        settling = self.settling(claim)
        if not settling and (wait := self.delete_wait()) > 0:
            return self.wait_out_delete(claim, wait)
        try:
            request = self.after_refunds()
        except InvalidPayload as error:
            if not terminal.finish_unrun(
                fence=claim.fence, op=self.op, reason=error.reason, message=str(error)
            ):
                return None
            return Failed(error.reason, f"{error.reason}: {error}")
        except IdConflict as error:
            return self.failed(error, claim, partial(self.give_up, terminal, claim, error))
        try:
            if settling:
                issued = settle_issue(self.provider, request, self.sends(claim))
            else:
                operation = self.operation("issue", claim)
                issued = issue_receipt(
                    self.provider,
                    request,
                    look_first=claim.resumed,
                    operation=operation,
                    sends=self.sends(claim, operation=operation),
                )
                self.count_late(issued)
        except ProviderError as error:
            return self.failed(error, claim, partial(self.give_up, terminal, claim, error))
        self.answered()
        if not terminal.finish(
            fence=claim.fence, issued=issued.receipt, duplicate=issued.duplicate
        ):
            return None
        return Done(Outcome.ISSUED_DUPLICATE if issued.duplicate else Outcome.ISSUED)

    def after_refunds(self) -> ReceiptRequest:
        """The receipt to issue: a job that a partial refund reached first (it came before
        its confirmation, or the re-issue failed) issues the balance it left, not the
        sale's total (:func:`balance_request`): an external receipt's, a V2 payment's."""
        if self.job.imp_uid is not None:
            return self.request
        kept = self.store.view(self.job)
        balance = kept.balance if kept is not None else None
        if balance is None:
            return self.request
        wanted, sale = self.request.options.get("amount"), balance.get("sale")
        another = sale is not None and wanted not in (sale, balance["amount"])
        if self.job.kind == EXTERNAL and another:
            # Merchants reuse their ids: a confirmation for another total is another sale,
            # which must not take this one's balance (nor its buyer this one's receipt).
            raise IdConflict(
                f"{self.job.receipt_key}'s sale of {sale} won was refunded to "
                f"{balance['amount']}: a confirmation for {wanted} is another sale's; issue "
                "it under another merchant_uid",
                status=None,
            )
        return balance_request(self.request, recorded_refund(balance))


class UnreadableRunner(JobRunner):
    """An issue message whose payload no configured key opens: it ends its job, failed.

    It claims the job like any issue message, so the job ends in one failure
    event (``payload_unreadable``) and the sweeper has nothing left to re-send.
    The failure is its message's alone: an issue message waiting on the job takes
    it over (``finish_unrun``), and issues if its own payload opens. A job already
    ended answers as it would any issue message. Its ``message`` is what the job
    keeps, the sealed fields as they came
    (:func:`~worker.core.schemas.kept_unreadable`): once the key that sealed them
    is configured again, ``cashreceipt replay`` issues it.
    """

    def settled(self, claim: Claim) -> Instruction:
        return issue_settled(self.terminal, claim)

    def act(self, terminal: TerminalPublisher, claim: Claim) -> Instruction | None:
        # Nothing is sent. A POST an earlier attempt left unsettled stays recorded (the
        # failure does not settle it), so a replay waits it out and looks first.
        if not terminal.finish_unrun(
            fence=claim.fence, op=self.op, reason=PAYLOAD_UNREADABLE, message=UNREADABLE_MESSAGE
        ):
            return None
        return Failed(PAYLOAD_UNREADABLE, f"{PAYLOAD_UNREADABLE}: {UNREADABLE_MESSAGE}")


class CancelRunner(JobRunner):
    """``cancel_cash_receipt``: cancel a refunded payment's receipt, re-issue the balance.

    The steps of a refund, each recorded in the store before the next:
    a full refund cancels the live receipt; a partial one (the cancellation has an
    ``amount``) cancels it and then issues a receipt for what is left. A partial
    refund whose live receipt already covers the balance was handled before: a
    duplicate, nothing sent.
    """

    op = "cancel"

    def __init__(
        self,
        *,
        sealer: Unsealer,
        store: JobStore,
        provider: Provider,
        terminal: TerminalPublisher,
        rules: Rules,
        message: dict[str, Any],
        carried_fence: int | None = None,
        attempt: int = 1,
    ) -> None:
        super().__init__(
            store=store,
            provider=provider,
            terminal=terminal,
            rules=rules,
            job=payload_job(message),
            message=message,
            carried_fence=carried_fence,
            attempt=attempt,
        )
        #: Unseals the issue's payload for the re-issue after a partial refund.
        self.sealer = sealer
        #: The live receipt this attempt's last lookup showed (None: none, or none shown).
        self.live: Receipt | None = None
        #: Whether this refund leaves a balance to re-issue (:meth:`refund_read`).
        self.leaves_balance = partial_refund(message)

    def settled(self, claim: Claim) -> Instruction:
        # cancelled already: this cancellation repeated one that happened.
        return cancel_settled(self.terminal, claim)

    def act(  # noqa: PLR0911 (one return per way a refund's attempt ends)
        self, terminal: TerminalPublisher, claim: Claim
    ) -> Instruction | None:
        store = self.store
        self.live = None
        job = store.view(self.job)
        # A retry after the cancel step only re-issues (note_cancelled, below).
        cancel_done = job is not None and job.cancel_done
        cancelled = job.cancelled_receipt if job else None
        payload = job.payload if job else None
        try:
            refund, cancel_done = self.refund_read(job, cancel_done=cancel_done)
        except ProviderError as error:
            return self.failed(error, claim, partial(self.give_up, terminal, claim, error))
        # The balance's receipt is issued from the kept payload: opened before anything is
        # cancelled, so that a payload no key opens cancels nothing (it fails whole).
        request, unopened = (
            self.open_kept(payload, refund)
            if self.leaves_balance and payload is not None
            else (None, None)
        )
        try:
            if not cancel_done and self.leaves_balance and self.stale(job, refund):
                return self.stale_refund(terminal, claim, job)
            if not cancel_done and self.leaves_balance and (live := self.covering(job)):
                # This refund was already handled (the same event, sent again):
                # no DELETE, no POST; the live receipt stays the job's.
                earlier = cancelled.as_dict() if cancelled else None
                ok = terminal.finish_cancel_duplicate(fence=claim.fence, live=live, earlier=earlier)
                return Done(Outcome.CANCELLED_DUPLICATE) if ok else None
            if not cancel_done and unopened is not None:
                return self.refuse_unopened(terminal, claim, unopened)
            if not cancel_done:
                balance = (
                    self.balance_left(job, refund)
                    if self.leaves_balance and self.job.imp_uid is None
                    else None
                )
                noted, cancelled = self.cancel_step(
                    claim, inherited=bool(job and job.cancel_inherited), balance=balance
                )
                if not noted:
                    return None
        except ProviderError as error:
            return self.failed(error, claim, partial(self.give_up, terminal, claim, error))
        if not cancel_done:
            self.answered()
        return self.after_cancel(
            terminal, claim, cancelled, request, unopened, kept=payload, look_first=cancel_done
        )

    def after_cancel(
        self,
        terminal: TerminalPublisher,
        claim: Claim,
        cancelled: Receipt | None,
        request: ReceiptRequest | None,
        unopened: InvalidPayload | None,
        *,
        kept: dict[str, Any] | None,
        look_first: bool = True,
    ) -> Instruction | None:
        """What follows the cancel step: a full refund ends; a partial one issues the balance
        from the ``kept`` payload (``request``, opened, or why not: ``unopened``), looking
        first unless this attempt did the cancel step (:meth:`reissue`)."""
        if self.leaves_balance and kept is None and cancelled is not None:
            # A receipt was cancelled and nothing here can issue its balance: the
            # identifier went with the payload (a record past LEDGER_RETENTION, or a
            # receipt this worker never issued). Said, not silent (issue 14, finding 9).
            failure = no_payload_detail()
            return self.reissue_failed(terminal, claim, cancelled, failure, sent=False)
        if not self.leaves_balance or kept is None:
            ok = terminal.finish_cancelled(fence=claim.fence, cancelled=cancelled)
            return Done(Outcome.CANCELLED) if ok else None
        return self.reissue(terminal, claim, cancelled, request, unopened, look_first=look_first)

    def cancel_step(
        self, claim: Claim, *, inherited: bool, balance: Mapping[str, Any] | None
    ) -> tuple[bool, Receipt | None]:
        """Cancel the live receipt (only look, when settling) and record the step with the
        ``balance`` it leaves: whether it was recorded (False: fenced out), and the receipt
        cancelled."""
        if self.settling(claim):
            cancelled = settle_cancel(
                self.provider, self.job, sends=self.sends(claim), seen=self.saw
            )
        else:
            operation = self.operation("cancel", claim)
            cancelled = cancel_live_receipt(
                self.provider,
                self.job,
                operation=operation,
                sends=self.sends(claim, delete=True, operation=operation),
                seen=self.saw,
            )
        if not self.store.note_cancelled(
            self.job, fence=claim.fence, receipt=cancelled, balance=balance
        ):
            return False, cancelled
        if inherited:
            # The request the refund taken over left unsettled (its re-issue) was waited
            # out and looked for: this refund's own re-issue takes a new key.
            self.sends(claim).answered()
        return True, cancelled

    def refund_read(
        self, job: JobView | None, *, cancel_done: bool
    ) -> tuple[Mapping[str, Any], bool]:
        """What this refund leaves, as an external receipt's refund says it, and whether the
        cancel step is done for it; sets :attr:`leaves_balance`.

        A PortOne V2 payment's is read from PortOne's payment
        (:func:`~worker.core.refunds.payment_refund`) until the cancel step is done, and
        from the balance recorded then after it: the re-issue's body stays as it was
        first sent. A payment with nothing left is a full refund. A refund that took the
        job over from another whose cancel step was done (``cancel_inherited``) takes its
        own steps, unless it is that refund again (or an older one, late): then it
        finishes that one's, from the balance recorded.
        """
        refund = self.balance_read(job, cancel_done=cancel_done)
        taken_over = job is not None and job.cancel_inherited
        if taken_over and self.leaves_balance and self.stale(job, refund):
            assert job is not None and job.balance is not None
            return recorded_refund(job.balance), True
        return refund, cancel_done

    def balance_read(self, job: JobView | None, *, cancel_done: bool) -> Mapping[str, Any]:
        """:meth:`refund_read`'s balance, before a takeover is considered."""
        self.leaves_balance = partial_refund(self.message)
        if not self.leaves_balance or not payment_first(self.job):
            return self.message
        recorded = job.balance if job is not None else None
        if cancel_done and recorded is not None:
            return recorded_refund(recorded)
        # A refund_id not handled before is a new refund: PortOne must show it beyond what
        # the refunds handled so far account for, or it has not caught up (issue 16 review,
        # finding 4). One handled late, after a later one (reordered), is accounted for by
        # what PortOne shows beyond them. Without a refund_id only this refund's own amount
        # can be asked for: the same refund sent again is told by its balance (stale).
        refund_id = self.message.get("refund_id")
        handled = 0
        if recorded is not None and refund_id not in (None, *recorded.get("refunds", ())):
            handled = recorded.get("refunded", 0)
        refund = payment_refund(self.provider, self.job, self.message["amount"], handled=handled)
        self.leaves_balance = refund["remaining_amount"] > 0
        return refund

    def stale(self, job: JobView | None, refund: Mapping[str, Any]) -> bool:
        """Whether a refund leaves no less than the balance an earlier one left (an
        external receipt's, a V2 payment's): the same refund again, or an earlier one
        that came late."""
        recorded = job.balance if job is not None else None
        if recorded is None:
            return False
        remaining = refund["remaining_amount"]
        if remaining == recorded["amount"] and recorded.get("tax_free") is None:
            # The same balance, sent again with the tax-free part it lacked: an update.
            return refund.get("remaining_tax_free") is None
        return bool(remaining >= recorded["amount"])

    def stale_refund(
        self, terminal: TerminalPublisher, claim: Claim, job: JobView | None
    ) -> Instruction | None:
        """A stale or repeated refund (:meth:`stale`): a duplicate, nothing sent, whether or
        not a receipt is live; None: fenced out."""
        live = self.provider.find_receipt(self.job)
        if live is not None and live.active:
            earlier = job.cancelled_receipt if job is not None else None
            ok = terminal.finish_cancel_duplicate(
                fence=claim.fence, live=live, earlier=earlier.as_dict() if earlier else None
            )
        else:
            failed = job is not None and job.failed_before
            ok = terminal.finish_refund_stale(fence=claim.fence, failed=failed)
        return Done(Outcome.CANCELLED_DUPLICATE) if ok else None

    def balance_left(self, job: JobView | None, refund: Mapping[str, Any]) -> dict[str, Any]:
        """What this refund leaves of the sale: the new balance, and the sale's total (from
        the balance recorded, else the kept payload), so a later confirmation can tell
        the same sale from another one under the merchant_uid."""
        recorded = (job.balance if job is not None else None) or {}
        kept = (job.payload if job is not None else None) or {}
        balance = {
            "amount": refund["remaining_amount"],
            "tax_free": refund.get("remaining_tax_free"),
            "sale": recorded.get("sale", kept.get("amount")),
        }
        if self.job.kind == EXTERNAL:
            return balance
        # A V2 payment's refunds handled so far: their refund_ids, and how much they
        # refunded, which PortOne's payment must show beyond for a new one (balance_read).
        refunds = list(recorded.get("refunds", ()))
        if (refund_id := self.message.get("refund_id")) is not None:
            refunds.append(refund_id)
        refunded = recorded.get("refunded", 0) + self.message["amount"]
        return {**balance, "refunds": refunds, "refunded": refunded}

    def covering(self, job: JobView | None) -> Receipt | None:
        """The live receipt when it already covers the balance this refund leaves: the
        refund was handled before (the same one again, or an earlier one late)."""
        if self.job.kind == EXTERNAL:
            return receipt_covering(self.provider, self.job, self.message["remaining_amount"])
        return receipt_for_balance(self.provider, self.job, recorded=job.receipt if job else None)

    def open_kept(
        self, payload: dict[str, Any], refund: Mapping[str, Any]
    ) -> tuple[ReceiptRequest | None, InvalidPayload | None]:
        """The balance's receipt, from the job's kept issue payload; or why it cannot be
        opened (no key opens it), or asked for (:func:`balance_request`)."""
        try:
            return balance_request(load_payload(payload, self.sealer), refund), None
        except InvalidPayload as error:
            return None, error

    def refuse_unopened(
        self, terminal: TerminalPublisher, claim: Claim, error: InvalidPayload
    ) -> Instruction | None:
        """A partial refund whose balance could not be issued: nothing is cancelled, and
        it fails for good (``cancel_failed``, the receipt live); None: fenced out."""
        message = UNREADABLE_MESSAGE if isinstance(error, PayloadUnreadable) else str(error)
        if not terminal.finish_unrun(
            fence=claim.fence, op=self.op, reason=error.reason, message=message
        ):
            return None
        return Failed(error.reason, f"cancel {error.reason}: {message}")

    def saw(self, live: Receipt | None) -> None:
        """What a lookup of the cancel step showed live."""
        self.live = live

    def give_up(
        self, terminal: TerminalPublisher, claim: Claim, error: ProviderError, reason: str
    ) -> Instruction | None:
        """The cancel step failed for good: its failure event, with the live receipt its
        lookup saw, if any; None: fenced out."""
        if not terminal.finish_cancel_failed(
            fence=claim.fence, error=error, reason=reason, live=self.live
        ):
            return None
        return Failed(reason, f"cancel {reason}: {failure_message(error)}")

    def give_up_reissue(
        self,
        terminal: TerminalPublisher,
        claim: Claim,
        cancelled: Receipt | None,
        error: ProviderError,
        reason: str,
    ) -> Instruction | None:
        """The re-issue failed for good: the cancelled event says so; None: fenced out."""
        return self.reissue_failed(terminal, claim, cancelled, error_detail(error, reason))

    def reissue_failed(
        self,
        terminal: TerminalPublisher,
        claim: Claim,
        cancelled: Receipt | None,
        failure: dict[str, Any],
        *,
        sent: bool = True,
    ) -> Instruction | None:
        """The receipt is cancelled and its balance has none: the job fails, replayable.

        ``sent``: the re-issue's POST went out, and may be unsettled.
        """
        ok = terminal.finish_cancelled(
            fence=claim.fence, cancelled=cancelled, reissue_failure=failure, settled=not sent
        )
        reason = failure["error"]["reason"]
        return Done(Outcome.CANCELLED_REISSUE_FAILED, reason=reason) if ok else None

    def reissue(
        self,
        terminal: TerminalPublisher,
        claim: Claim,
        cancelled: Receipt | None,
        request: ReceiptRequest | None,
        unopened: InvalidPayload | None,
        *,
        look_first: bool = True,
    ) -> Instruction | None:
        """After a partial refund: a new receipt for what is left, which the provider computes.

        ``request`` is None when the kept payload did not open (``unopened`` says why)
        after the cancel step was done: the job ends failed, replayable once the key
        that sealed it is configured again. ``look_first``: an earlier attempt did the
        cancel step, and may have sent this POST without hearing back. An attempt that
        cancelled the receipt itself knows that no re-issue was sent (one goes only after
        the cancel step is recorded): it does not look first. No POST goes out until the
        bound has passed since the last DELETE (:meth:`delete_wait`), so an attempt that
        DELETEd hands the job on first (issue 14, finding 14).
        """
        if request is None:
            assert unopened is not None
            failure = invalid_detail(unopened)
            return self.reissue_failed(terminal, claim, cancelled, failure, sent=False)
        settling = self.settling(claim)
        if not settling and (wait := self.delete_wait()) > 0:
            return self.wait_out_delete(claim, wait)
        try:
            operation = self.operation("reissue", claim)
            sends = self.sends(claim, operation=operation)
            if settling:
                issued = settle_issue(self.provider, request, sends)
            else:
                issued = issue_receipt(
                    self.provider,
                    request,
                    look_first=look_first,
                    operation=operation,
                    sends=sends,
                )
                self.count_late(issued)
        except ProviderError as error:
            give_up = partial(self.give_up_reissue, terminal, claim, cancelled, error)
            return self.failed(error, claim, give_up)
        self.answered()
        ok = terminal.finish_cancelled(
            fence=claim.fence, cancelled=cancelled, reissued=issued.receipt
        )
        return Done(Outcome.CANCELLED_REISSUED) if ok else None
