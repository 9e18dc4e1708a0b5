"""What the operator's commands do, without the command line: dead letters, replay, reconcile.

Kept apart from :mod:`worker.cli` so that each can be tested against a real
Redis and the sandbox without parsing arguments, and reused from a shell.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from worker.adapters.store.views import (
    ReplaySource,
    dead_jobs,
    has_record,
    ledger_state,
    replay_source,
    replayed_under,
)
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.core.contract import EXTERNAL, PORTONE
from worker.core.errors import ConnectionFailed, ProviderError, RateLimited, TransientError
from worker.core.issuing import find_issued
from worker.core.ports import Provider
from worker.core.refunds import balance_fields, recorded_refund
from worker.core.retry import ID_TAKEN, lookup_wait, reason_for
from worker.core.schemas import kept_job
from worker.core.types import JobKey, Payment, Receipt


@dataclass(frozen=True)
class _OfJob:
    """What a command found of one job."""

    job: JobKey

    @property
    def imp_uid(self) -> str | None:
        """The V1 payment's id; None for another kind of job."""
        return self.job.imp_uid


@dataclass(frozen=True)
class Replayed(_OfJob):
    """One replayed job: the new task id, or why it was not replayed."""

    task_id: str | None
    skipped: str | None = None
    #: The job the replay issues under, when not this one (``--new-id``).
    issued_as: JobKey | None = None


def replay(
    client: redis.Redis,
    app: Celery,
    jobs: Iterable[JobKey | str],
    *,
    corrections: dict[str, Any] | None = None,
    new_id: bool = False,
) -> Iterator[Replayed]:
    """Re-enqueue failed jobs (a string: a V1 payment's imp_uid) from their sealed
    payloads, with ``corrections`` applied.

    An external receipt whose partial refund's re-issue failed is replayed for the
    balance that refund left (``remaining_amount``), not the sale's total. ``new_id``
    issues it under a derived merchant_uid (:func:`derived_merchant_uid`), for when
    i'mport refuses a new receipt under the old one (``id_taken``); the old job then
    leaves the dead letters, and later refunds of the sale name the new merchant_uid.

    A correction of the identifier replaces the sealed one. The ledger keeps
    the earlier attempts in the job's history; the replay is a new attempt,
    with a fresh attempt budget. A cancellation that failed for good
    (``cancel_failed``, the receipt still live) is sent again as it was. A
    payment's job that keeps no payload is replayed only with an identifier
    given; another kind's payload cannot be rebuilt from an identifier.
    """
    for named in map(JobKey.of, jobs):
        source = replay_source(client, named)
        job = kept_job(named, source.payload)
        if source.cancel is not None:
            if corrections:
                yield Replayed(job, None, skipped="a cancellation takes no corrections")
                continue
            yield Replayed(job, enqueue_cancel(source.cancel, app=app))
            continue
        if source.state != "failed":
            yield Replayed(job, None, skipped=f"state is {source.state}")
            continue
        payload = dict(source.payload)
        if not payload and job.imp_uid is not None and "identifier" in (corrections or {}):
            # A partial refund's re-issue that had no payload to issue from (no_payload):
            # the operator's identifier is the payload; i'mport computes the balance.
            payload = {"imp_uid": job.imp_uid}
        if not payload:
            yield Replayed(job, None, skipped="no payload kept")
            continue
        if corrections:
            if "identifier" in corrections:
                payload.pop("identifier_sealed", None)
            payload.update(corrections)
        if job.kind == EXTERNAL and source.balance is not None:
            # The balance its last refund left. A V2 payment's payload keeps the sale's
            # total, which PortOne's payment is checked with: the worker issues the
            # recorded balance (IssueRunner.after_refunds).
            payload = balance_fields(payload, recorded_refund(source.balance))
        if not new_id:
            # The kept payload names its job (an external receipt's: kind and merchant_uid).
            yield Replayed(job, enqueue_issue(payload, app=app))
            continue
        refused = new_id_refused(client, job, source)
        if refused is not None:
            yield Replayed(job, None, skipped=refused)
            continue
        derived = derived_merchant_uid(job.id)
        issued_as = _under(job, derived)
        payload["payment_id" if job.provider == PORTONE else "merchant_uid"] = derived
        task_id = enqueue_issue(payload, app=app)
        replayed_under(client, job, derived)
        yield Replayed(job, task_id, issued_as=issued_as)


def _under(job: JobKey, derived: str) -> JobKey:
    """The external receipt's job of the same provider under the ``derived`` id."""
    return (
        JobKey.portone(derived, EXTERNAL) if job.provider == PORTONE else JobKey.external(derived)
    )


#: The longest merchant_uid i'mport takes (and the payload's schema).
MERCHANT_UID_MAX = 100


def derived_merchant_uid(merchant_uid: str) -> str:
    """The merchant_uid (a V2 external receipt's paymentId) a balance is issued under when
    the provider refuses its own again: ``<id>-r1``. The same each time, so a replay run
    twice is one job."""
    return f"{merchant_uid}-r1"


def new_id_refused(client: redis.Redis, job: JobKey, source: ReplaySource) -> str | None:
    """Why ``--new-id`` must not issue ``job``'s balance under a derived id; None: it may.

    Only for an external receipt whose merchant_uid i'mport will not issue under again
    (``id_taken``): any other failure may hide a receipt that exists (an unsettled POST),
    and a second one, under another id, would be a second receipt for one sale. The
    derived id must fit i'mport's 100 characters and be no order of the merchant's own:
    one the ledger already holds is taken unless this job's replay made it.
    """
    if job.kind != EXTERNAL:
        if job.provider == PORTONE and source.balance is not None:
            # A payment's receipt is the payment's: no other id names that sale to PortOne.
            return (
                "a PortOne payment takes no new id: issue its balance, "
                f"{source.balance['amount']} won, by hand"
            )
        return "only an external receipt takes a new id"
    if source.reason != ID_TAKEN:
        return (
            f"its last failure is {source.reason or 'none'}, not {ID_TAKEN}: replay it "
            "under its own merchant_uid, whose lookup finds a receipt that exists"
        )
    derived = derived_merchant_uid(job.id)
    if len(derived) > MERCHANT_UID_MAX:
        return (
            f"{derived!r} would pass the {MERCHANT_UID_MAX} characters of an id: issue the "
            "balance by hand under an order id of your own"
        )
    if source.replayed_as != derived and has_record(client, _under(job, derived)):
        return (
            f"{derived!r} is already an order of its own in the ledger: issue the balance "
            "by hand under another order id"
        )
    return None


def replay_reason(client: redis.Redis, reason: str, *, limit: int = 1000) -> list[JobKey]:
    """The failed jobs, of every kind, whose last failure had ``reason``."""
    return [job for job, _ in dead_jobs(client, reason=reason, limit=limit)]


@dataclass(frozen=True)
class Mismatch(_OfJob):
    """A job on which the ledger and i'mport disagree."""

    ledger: str
    iamport: str


@dataclass(frozen=True)
class NotChecked(_OfJob):
    """A job i'mport did not answer for: neither clean nor a mismatch, so it is reported.

    ``reason`` is the failure-reason vocabulary of the events for what i'mport
    answered last (``rate_limited``, ``unavailable`` and ``unreachable`` for
    the transient kinds); ``status`` its HTTP status, if any. Nothing of the
    request or of the provider's message is kept: no identifier can leak.
    """

    ledger: str
    reason: str
    status: int | None


#: Lookups per job when i'mport answers "not now" (a 429, a 503, no answer).
LOOKUP_ATTEMPTS = 3
#: The longest wait before one retry, whatever Retry-After says, in seconds.
LOOKUP_RETRY_WAIT_MAX = 2.0
#: The seconds of waiting a whole run may spend on retries: past it, a lookup
#: that fails is reported at once, so an outage costs one try per job.
RECONCILE_RETRY_BUDGET = 10.0


def reconcile(
    client: redis.Redis,
    provider_for: Callable[[JobKey], Provider],
    jobs: Iterable[JobKey | str],
    *,
    retry_budget: float = RECONCILE_RETRY_BUDGET,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Mismatch | NotChecked]:
    """Compare the ledger with i'mport for each job (a string: a V1 payment's imp_uid);
    yield where they disagree.

    Issued in the ledger must mean an active receipt at i'mport, and the very
    one the ledger recorded; failed or cancelled must mean none. A receipt the
    ledger did not expect is a request i'mport acted on later than
    IAMPORT_SETTLE_SECONDS (a second issue, when i'mport did not refuse it),
    or an issue made outside this worker: either way a human must look.
    In-flight jobs are skipped: they are settling.

    A job i'mport does not answer for is a :class:`NotChecked`, and the
    run goes on: one rate limit over a long list must not hide a late double
    issue further down. A transient answer is retried a little
    (``LOOKUP_ATTEMPTS``), but the waiting of the whole run is capped at
    ``retry_budget`` seconds, so a long outage reports every job rather
    than hanging. An external receipt is looked up by its merchant_uid
    (``GET /receipts/external/{merchant_uid}``), through its provider
    (``provider_for``); a PortOne V2 job is also listed (``GET /cash-receipts`` by its
    payment id), where a second live receipt shows.
    """
    budget = [retry_budget]
    for named in map(JobKey.of, jobs):
        recorded = ledger_state(client, named)
        state, job = recorded.state, recorded.job
        if state in {"in_flight", "received"}:
            continue
        provider = provider_for(job)
        try:
            receipt, _ = _look_up(provider, job, budget, sleep)
            live_count = _live_receipts(provider, job)
        except ProviderError as error:
            yield NotChecked(job, state, lookup_failure(error), error.status)
            continue
        if live_count > 1:
            yield Mismatch(job, state, f"{live_count} active receipts")
            continue
        live = receipt is not None
        if (state == "issued") != live:
            yield Mismatch(job, state, "active receipt" if live else "no active receipt")
        elif receipt is not None and _another_receipt(recorded.receipt_tid, receipt.receipt_tid):
            yield Mismatch(job, state, "another active receipt than the ledger's")


def _live_receipts(provider: Provider, job: JobKey) -> int:
    """How many live receipts a PortOne V2 payment id has (its list); 1 for another kind,
    whose provider keeps one per id."""
    if job.provider != PORTONE:
        return 1
    return sum(1 for receipt in provider.list_receipts(job) if receipt.active)


def _look_up(
    provider: Provider, job: JobKey, budget: list[float], sleep: Callable[[float], None]
) -> tuple[Receipt | None, Payment | None]:
    """find_issued, retried on a transient answer while ``budget[0]`` (seconds, shared) lasts."""
    for attempt in range(1, LOOKUP_ATTEMPTS + 1):
        try:
            return find_issued(provider, job)
        except TransientError as error:
            wait = lookup_wait(error.retry_after, attempt=attempt, cap=LOOKUP_RETRY_WAIT_MAX)
            if attempt == LOOKUP_ATTEMPTS or wait > budget[0]:
                raise
            budget[0] -= wait
            sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def lookup_failure(error: ProviderError) -> str:
    """The reason a lookup failed, in the events' words; the transient kinds by name."""
    if isinstance(error, RateLimited):
        return "rate_limited"
    if isinstance(error, ConnectionFailed):
        return "unreachable"
    if isinstance(error, TransientError):
        return "unavailable"
    return reason_for(error)


def _another_receipt(ours: str | None, live_tid: str | None) -> bool:
    """Whether i'mport's live receipt is not the one the ledger recorded (when both are known)."""
    return bool(ours and live_tid and ours != live_tid)
