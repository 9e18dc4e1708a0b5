"""How a message that is never run ends: one failure event, and its job not stranded.

Celery discards a message without running its task when the message is past its
``expires``, or when an operator revoked its task id. The message still ends in one
terminal event: ``cash_receipt.failed`` (``cash_receipt.cancel_failed`` for a
cancellation), reason ``expired`` or ``revoked``.

Its ledger job, when the message owns one, ends with it, as any failure does: the
sweeper would otherwise re-send the job (without the ``expires`` the producer
set, and under the same task id) and issue what the producer said must not run,
under a message that had already said ``expired``. A message that owns no job
(a duplicate of another task's payment, or sent without the ledger) publishes
its event alone. While another delivery of the same message holds the job, that
delivery publishes the message's one event, so nothing is done here; and while
the job's last request is unsettled, the run the sweeper starts does (it looks first).

The failure is the message's alone. Issue messages that waited on its job did run:
they do not inherit an ``expired`` or a ``revoked``; the first of them takes the
job over (the store's ``to_waiter``), and the others hear its outcome.
"""

from __future__ import annotations

from enum import StrEnum

from worker.core.ports import ClaimKind, JobStore, JobView, Published
from worker.core.schemas import naming_payload
from worker.core.terminal import TerminalPublisher

#: The failure reasons, as Celery names why it discarded the message.
EXPIRED = "expired"
REVOKED = "revoked"

_MESSAGES = {
    EXPIRED: "The message was past its expires time; it was not run.",
    REVOKED: "The task was revoked; it was not run.",
}


class Unrun(StrEnum):
    """What :func:`end_unrun` did."""

    #: The job was the message's: it ended failed, with its event.
    JOB_ENDED = "job_ended"
    #: The message owned no job that could be ended: its event was published alone.
    PUBLISHED = "published"
    #: Another delivery of this message holds the job, or it already ended: nothing.
    LEFT = "left"


def end_unrun(
    store: JobStore,
    terminal: TerminalPublisher,
    *,
    op: str,
    reason: str,
    carried_fence: int | None,
) -> Unrun:
    """End a message of task ``terminal.task_id`` that Celery discarded for ``reason``."""
    job = terminal.job
    view = store.view(job) if job is not None else None
    if op == "issue" and job is not None and view is not None and view.state == "issued":
        # The payment's receipt exists: had this message run, it would have heard so.
        # The claim only reads an issued job; it changes nothing.
        found = store.claim(
            job, task_id=terminal.task_id, payload=view.payload or naming_payload(job)
        )
        if found.kind is ClaimKind.ISSUED:
            return _published(terminal.issued_duplicate(found.receipt or {}))
        if found.kind is ClaimKind.DONE:
            return Unrun.LEFT
        view = store.view(job)
    if job is None or view is None or view.task_id != terminal.task_id or not view.is_open:
        # Not this message's job, or one that ended: its event alone (a task id
        # publishes once, so a redelivery of an ended message publishes nothing).
        return _published(terminal.unrun(op=op, reason=reason, message=_MESSAGES[reason]))
    if view.sent_at is not None:
        # An earlier attempt's POST or DELETE is unsettled: the provider may have acted
        # on it, and a failure now could report a receipt that exists as failed. The
        # sweeper re-sends the job under this task id; that run looks first, and
        # publishes this message's one event.
        return Unrun.LEFT
    return _end_own_job(store, terminal, view, op=op, reason=reason, carried_fence=carried_fence)


def _end_own_job(
    store: JobStore,
    terminal: TerminalPublisher,
    view: JobView,
    *,
    op: str,
    reason: str,
    carried_fence: int | None,
) -> Unrun:
    """Claim the message's own job and end it failed, unless a request turned out unsettled."""
    job = terminal.job
    assert job is not None
    payload = view.cancel if view.op == "cancel" else view.payload
    claim = store.claim(
        job,
        task_id=terminal.task_id,
        payload=payload or naming_payload(job),
        op=view.op,
        fence=carried_fence,
    )
    if claim.kind in {ClaimKind.BUSY, ClaimKind.DONE}:
        return Unrun.LEFT
    if claim.kind is not ClaimKind.CLAIMED:
        return _published(terminal.unrun(op=op, reason=reason, message=_MESSAGES[reason]))
    under_claim = store.view(job)
    if under_claim is not None and under_claim.sent_at is not None:
        # A delivery whose lease lapsed sent its request between the view and the
        # claim (the claim has fenced it out since): as above, the job is handed
        # back to the sweeper, due now, whose run looks first.
        note = {"reason": reason, "message": "a request is unsettled; re-sent to settle"}
        store.park(job, fence=claim.fence, until=store.now(), error=note)
        return Unrun.LEFT
    message = _MESSAGES[reason]
    if terminal.finish_unrun(fence=claim.fence, op=view.op, reason=reason, message=message):
        return Unrun.JOB_ENDED
    return Unrun.LEFT


def _published(published: Published) -> Unrun:
    return Unrun.PUBLISHED if published.new else Unrun.LEFT
