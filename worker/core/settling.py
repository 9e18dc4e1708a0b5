"""``cashreceipt settle``: force a lookup at the provider and settle one job. Pure: the ports."""

from __future__ import annotations

from typing import Any

from worker.core.issuing import find_issued, settle_delay
from worker.core.ports import ClaimKind, EventPublisher, JobStore, JobView, Provider
from worker.core.schemas import kept_job
from worker.core.terminal import TerminalPublisher
from worker.core.types import JobKey


def settle(
    key: JobKey,
    *,
    store: JobStore,
    client: Provider,
    events: EventPublisher,
    settle_seconds: float,
) -> str:
    """Force a lookup at the provider and settle the job: ``cashreceipt settle``.

    Nothing is done while the provider may still act on the job's last POST or
    DELETE (``settling``: try again after its bound, IAMPORT_SETTLE_SECONDS or
    PORTONE_SETTLE_SECONDS). The job is
    claimed under its own task id, but only when no live claim holds it (it
    is ``received``, or its owner's lease passed): taking over a worker that
    is still in the middle of its POST would let the re-sent job POST too.
    Such a job is left alone (``busy``). If the provider has an active receipt,
    the job ends issued (its event goes out for the task that started it); if
    not, it is handed back to the store, due now, and the sweeper re-sends it.
    ``settle_seconds`` is the job's provider's bound.
    """
    imp_uid = key.id
    job = store.view(key)
    if job is None:
        return "unknown"
    if (left_as_is := _not_to_settle(job, settle_seconds, now=store.now())) is not None:
        return left_as_is
    task_id = job.task_id
    if job.op == "cancel":
        return _settle_cancel(store, key, task_id, job.cancel or {})
    payload = job.payload
    if payload is None:  # never for an issue job: receive and claim both keep it
        raise LookupError(f"the issue job of {imp_uid} keeps no payload")
    claim = store.claim(key, task_id=task_id, payload=payload)
    if claim.kind is not ClaimKind.CLAIMED:
        return claim.kind.value
    existing, _ = find_issued(client, kept_job(key, payload))
    if existing is not None:
        terminal = TerminalPublisher(
            events=events,
            store=store,
            task_id=task_id,
            attempts=claim.attempt,
            job=key,
            merchant_uid=payload.get("merchant_uid"),
        )
        return "issued" if terminal.finish(fence=claim.fence, issued=existing) else "fenced"
    note = {"reason": "settled", "message": f"no receipt at {key.provider}; re-sent"}
    store.park(key, fence=claim.fence, until=store.now(), error=note)
    return "resent"


def _not_to_settle(job: JobView, settle_seconds: float, *, now: float) -> str | None:
    """Why ``cashreceipt settle`` leaves a job as it is: it ended, or it is still settling."""
    if job.state in {"issued", "failed", "cancelled"}:
        return job.state
    if settle_delay(job.sent_at, bound=settle_seconds, now=now) > 0:
        # The provider may still act on the job's last POST or DELETE: a lookup now proves nothing.
        return "settling"
    return None


def _settle_cancel(store: JobStore, key: JobKey, task_id: str, cancel: dict[str, Any]) -> str:
    """A cancellation has nothing to adopt: hand it back due now, to be re-sent."""
    claim = store.claim(key, task_id=task_id, payload=cancel, op="cancel")
    if claim.kind is not ClaimKind.CLAIMED:
        return claim.kind.value
    note = {"reason": "settled", "message": "a cancellation; re-sent"}
    store.park(key, fence=claim.fence, until=store.now(), error=note)
    return "resent"
