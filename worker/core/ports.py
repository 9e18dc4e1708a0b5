"""The two ports of the core: the receipt provider, and the job store (with its events).

The core (the issue rule, the refund steps, the job runner) talks to the
outside world only through these protocols. The adapters implement them by
structure, not by inheritance, and mypy strict checks that they do where they
are handed to the core:

- :class:`Provider`: the i'mport V1 client
  (:class:`~worker.adapters.iamport.client.IamportClient`); PortOne V2 next.
- :class:`JobStore`: the Redis ledger (:class:`~worker.adapters.store.ledger.Ledger`), whose
  every transition is one Lua script, fenced.
- :class:`EventPublisher`: the Redis stream publisher
  (:class:`~worker.adapters.store.events.EventPublisher`), for an outcome no job transition
  carries (a duplicate message, an invalid payload).
- :class:`Sealing` (and :class:`Unsealer`, its opening half): the Fernet sealer
  (:class:`~worker.adapters.privacy.sealing.Sealer`), for the payload's personal data.

Tests hand the core in-memory implementations of all three (tests/support/memory.py),
and can gate every call (tests/support/stepping.py) to interleave runners
deterministically.

Every failure a provider raises is one of :mod:`worker.core.errors`. A store raises
what its backend raises (a Redis error): the caller retries the whole attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder


@dataclass(frozen=True)
class OperationId:
    """Which request, of which job, in which generation: a provider's idempotency key.

    ``generation`` is the fence of the claim that first sent this step's request, while
    its outcome is unknown: a retry of a request that got no answer is the same
    request, under the same key, so a provider that keeps keys (PortOne V2) replays
    its answer rather than act twice. A definite answer settles the request
    (``JobStore.note_answered``), and the next attempt's request is a new one, under its
    own claim's fence. Steps tell apart two requests of one job that must both take
    effect (the first issue, and the re-issue for the balance after a partial refund);
    a new claim of a finished job (a replay, a new confirmation) is a new generation.
    i'mport V1 has no idempotency key and ignores it; the rule that keeps a receipt to
    one remains the lookup before a POST (:mod:`worker.core.issuing`).
    """

    job: JobKey
    #: ``issue`` (the POST of an issue job), ``cancel`` (the DELETE of a refund) or
    #: ``reissue`` (the POST of a partial refund, for the balance).
    step: str
    generation: int

    @property
    def key(self) -> str:
        """The id as one string: ``<step>:<generation>:<receipt key>``."""
        return f"{self.step}:{self.generation}:{self.job.receipt_key}"

    @property
    def sent(self) -> str:
        """What a job keeps of the request while its outcome is unknown:
        ``<step>:<generation>`` (:func:`kept_generation` reads it back)."""
        return f"{self.step}:{self.generation}"


def kept_generation(sent: str | None, step: str) -> int | None:
    """The generation of a job's unsettled request of ``step`` (``OperationId.sent``), or
    None when the unsettled request, if any, was another step's."""
    if not sent:
        return None
    kept_step, _, generation = sent.partition(":")
    return int(generation) if kept_step == step and generation.isdigit() else None


class Provider(Protocol):
    """A cash-receipt provider: issue, look up, cancel. Errors: :mod:`worker.core.errors`.

    ``on_send`` is called right before a request that changes something goes
    out (after any token request, and again before each resend); what it
    raises stops the request, and reaches the caller.
    """

    @property
    def name(self) -> str:
        """The provider's name, as a metric label says it: ``iamport``."""

    @property
    def clean_answer(self) -> tuple[int | None, int | None]:
        """What a clean answer said, for a run's log line: (HTTP status, the provider's code).

        An error carries its own (:class:`~worker.core.errors.ProviderError`); i'mport
        V1 answers a success with 200 and its envelope's code 0.
        """

    def issue_receipt(
        self,
        request: ReceiptOrder,
        *,
        operation: OperationId,
        on_send: Callable[[], None],
    ) -> Receipt:
        """Issue ``request``'s receipt for its payment; anything but a clean answer raises.

        The adapter builds its provider's request from the typed ``request``.
        """

    def find_receipt(self, job: JobKey) -> Receipt | None:
        """The payment's newest receipt, active or cancelled; None when none can be shown."""

    def list_receipts(self, job: JobKey) -> list[Receipt]:
        """The payment's receipts, newest first.

        i'mport V1 keeps only the newest one per payment (a receipt issued after
        a cancelled one replaces it), so its list has at most one entry.
        """

    def get_payment(self, imp_uid: str) -> Payment:
        """The payment, with its refunded amount and whether it has a receipt."""

    def cancel_receipt(
        self, job: JobKey, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        """Cancel the payment's active receipt: the cancelled receipt."""


class ClaimKind(StrEnum):
    """What a claim found; the values are the words the store's claim script answers."""

    #: This task now owns the job (:attr:`Claim.fence`, :attr:`Claim.attempt`).
    CLAIMED = "claimed"
    #: Another live task owns it.
    BUSY = "busy"
    #: The job ended issued (:attr:`Claim.receipt`).
    ISSUED = "issued"
    #: The job ended cancelled.
    CANCELLED = "cancelled"
    #: This very task already published its outcome (a redelivery).
    DONE = "done"


@dataclass(frozen=True)
class Claim:
    """What :meth:`JobStore.claim` found: its :class:`ClaimKind`, and for a claim its fence.

    ``resumed`` is set when an earlier attempt may have reached the provider,
    so the job must look before it POSTs.
    """

    kind: ClaimKind
    fence: int = 0
    op: str = "issue"
    attempt: int = 0
    resumed: bool = False
    receipt: dict[str, Any] | None = None


@dataclass(frozen=True)
class JobView:
    """A job as the core reads it: typed, decoded, in no store's layout.

    The store owns how a record is kept (the Redis ledger: one hash per payment);
    the core reads only what it decides by, through :meth:`JobStore.view`.
    """

    #: ``received``, ``in_flight``, ``issued``, ``failed`` or ``cancelled``.
    state: str
    #: The task whose message owns the job (its event goes out under this id).
    task_id: str
    #: What the job does: ``issue``, or ``cancel`` (a refund).
    op: str
    #: The issue's payload as kept (identifier sealed); None: none kept.
    payload: dict[str, Any] | None
    #: A refund's cancellation message; None: the job is no refund.
    cancel: dict[str, Any] | None
    #: When the job's last POST or DELETE was sent (epoch s), while the provider has not
    #: answered it: a lookup settles it no earlier than the bound after this. None: settled.
    sent_at: float | None
    #: Which operation sent that request (``issue`` or ``cancel``); None: unrecorded (a
    #: record of older code), which means the job's own.
    sent_op: str | None
    #: The unsettled request's step and generation (:attr:`OperationId.sent`); None: none
    #: kept (settled, or a record of older code, whose retry starts a new generation).
    sent_operation: str | None = None
    #: When any attempt last sent a DELETE for the payment (epoch s), answered or not: the
    #: provider may act on it late, so no POST goes out until the bound after it. None: none.
    delete_sent_at: float | None = None
    #: A refund's cancel step is done (:meth:`JobStore.note_cancelled`): a retry only
    #: re-issues, never cancels again.
    cancel_done: bool = False
    #: Another refund's cancel step was done, and this refund took the job over from it:
    #: the balance that one re-issued may be live by now, so this one takes its own steps
    #: (it finishes that one's only when it is the same refund again).
    cancel_inherited: bool = False
    #: The receipt the job's latest cancel step cancelled, kept after its refund ended so
    #: that a repeated refund event can name it; None: none was live, or no cancel step.
    cancelled_receipt: Receipt | None = None
    #: The record holds a receipt (the one the job issued, or its refund's last word);
    #: False: none was ever recorded, as for a refund that came before its issue.
    has_receipt: bool = False
    #: That receipt, as the provider last showed it to the job (a POST's answer, a
    #: lookup); None: none, or none readable. For a PG whose receipts the provider cannot
    #: look up (KICC, Settlebank) it is the only word on what the live receipt is for.
    receipt: Receipt | None = None
    #: An external receipt's (or a PortOne V2 payment's) balance after every partial
    #: refund handled so far: the smallest ``remaining_amount`` (``amount``; a V2
    #: payment's as PortOne showed it), its ``tax_free``, and the ``sale``'s total it was
    #: taken from; a re-issue's body is built from it. None: no partial refund recorded.
    balance: dict[str, Any] | None = None
    #: The job ended failed before this claim (its dead letter stays when a refund finds
    #: nothing to do).
    failed_before: bool = False

    @property
    def is_open(self) -> bool:
        """Not ended: a message of the payment's may still run it, or wait on it."""
        return self.state in ("received", "in_flight")


@dataclass(frozen=True)
class Published:
    """Where an event went; ``new`` is False when the task had already published."""

    entry_id: str
    new: bool


@dataclass(frozen=True)
class TaskEnd:
    """What a task's terminal event named: its job's receipt key (None: no job could be
    read), and its operation (``issue`` or ``cancel``)."""

    receipt_key: str | None
    op: str


class JobStore(Protocol):
    """The job records: one per payment, every transition fenced.

    A claim bumps the job's fence; every later write of the claim's owner
    (``extend``, ``park``, the ``note_*`` steps, ``finish``) carries it and is
    refused (False, or None) once another claim took the job over. The store's
    clock is the only clock the core reads (:meth:`now`), so a test can move it.

    The store owns the record's layout: the core reads a job as a typed
    :class:`JobView`, and records each step it takes by a note named for that
    step, never by field names, so the layout can change in one place.
    """

    def now(self) -> float:
        """The time (epoch seconds) by the store's clock."""

    def receive(
        self, job: JobKey, *, task_id: str, payload: Mapping[str, Any], resend_after: float
    ) -> str:
        """Record a job before it is enqueued; returns the state it is in now."""

    def claim(
        self,
        job: JobKey,
        *,
        task_id: str,
        payload: Mapping[str, Any],
        op: str = "issue",
        fence: int | None = None,
    ) -> Claim:
        """Try to own the job for one attempt of ``op`` (``issue`` or ``cancel``)."""

    def stop_waiting(self, job: JobKey, task_id: str) -> None:
        """``task_id`` no longer waits on the job (a busy claim entered it): it will not hear
        the owner's outcome as its own, and claims again when its message comes back."""

    def extend(self, job: JobKey, *, fence: int, seconds: float, error: Mapping[str, Any]) -> bool:
        """Hold the claim through a short retry countdown plus one more attempt."""

    def park(self, job: JobKey, *, fence: int, until: float, error: Mapping[str, Any]) -> bool:
        """Hand the job back to the store until ``until`` (epoch s): a long wait."""

    def note_sent(
        self,
        job: JobKey,
        *,
        fence: int,
        at: float,
        op: str,
        delete: bool = False,
        operation: str | None = None,
    ) -> bool:
        """A POST or DELETE of ``op`` goes out at ``at`` (store time): kept until answered,
        with ``operation`` (:attr:`OperationId.sent`), whose key a retry sends again.

        Recorded before the request leaves, so a retry, a takeover after a crash
        and ``cashreceipt settle`` all wait out the bound from it before a lookup.
        ``delete``: the request is a DELETE, whose time is also kept after its answer
        (:attr:`JobView.delete_sent_at`). False: fenced out, and the request must not be sent.
        """

    def note_answered(self, job: JobKey, *, fence: int) -> bool:
        """The provider answered the job's last request: nothing is left to settle."""

    def note_cancelled(
        self,
        job: JobKey,
        *,
        fence: int,
        receipt: Receipt | None,
        balance: Mapping[str, Any] | None = None,
    ) -> bool:
        """A refund's cancel step is done (``receipt``: what it cancelled, None: none was live).

        One fenced write, before the re-issue: a retry after it re-issues only,
        and does not cancel the re-issued receipt. ``balance``: an external receipt's or
        a V2 payment's balance after this refund (:attr:`JobView.balance`), recorded with
        the step and not before: a refund whose cancel failed has left no balance, and its
        retry is no repeat of a refund handled. The re-issue's body is built from it.
        """

    def finish(
        self,
        job: JobKey,
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
        """End the job and publish its event, at once; None when this claim was fenced out.

        ``to_waiter``: the failure is the owner's alone (its message never ran), so an
        issue message waiting on the job takes it over instead of hearing it.
        """

    def view(self, job: JobKey) -> JobView | None:
        """The job as the core reads it, or None when the store has no record of it."""

    def task_end(self, task_id: str) -> TaskEnd | None:
        """How the task ended, while its once-only marker lasts; None: not ended, or forgotten."""


class EventPublisher(Protocol):
    """Publishes the one terminal event of a task message, unless it already exists."""

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
        """Publish ``task_id``'s terminal event; ``new`` is False when it already had one."""


class UnsealError(ValueError):
    """A sealed value is corrupt, or was sealed with a key we no longer have."""


class Unsealer(Protocol):
    """Opens the personal data a payload carries sealed (``identifier_sealed``, ``buyer_sealed``).

    The Fernet sealer (:class:`~worker.adapters.privacy.sealing.Sealer`) implements it,
    with :class:`Sealing`; the core holds no key and no cipher.
    """

    def open(self, token: str) -> tuple[str, bool]:
        """The value inside ``token``, and whether the newest key sealed it.

        Raises :class:`UnsealError`, saying nothing of the value, when it cannot.
        """


class Sealing(Unsealer, Protocol):
    """Opens, and seals again: what re-writing a payload for the broker and the ledger needs."""

    @property
    def enabled(self) -> bool:
        """False only in the explicitly allowed plaintext mode: nothing is sealed."""

    def seal(self, value: str) -> str:
        """The token of ``value`` under the newest key (only when :attr:`enabled`)."""
