"""How a task message ends: its one terminal event, through the job store or directly.

The owner of a job ends it through the store (:meth:`TerminalPublisher.finish`
and the ``finish_*`` methods), which makes the transition and publishes in one
step; everything else (an invalid payload, a duplicate of a settled job)
publishes directly. Either way, a task id publishes once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.core.errors import ProviderError
from worker.core.events import (
    CANCEL_FAILED,
    CANCELLED,
    FAILED,
    ISSUED,
    event_data,
    failure_detail,
    invalid_detail,
)
from worker.core.masking import mask_text
from worker.core.ports import EventPublisher, JobStore, Published
from worker.core.retry import ID_CONFLICT
from worker.core.schemas import InvalidPayload
from worker.core.types import JobKey, Receipt

log = logging.getLogger(__name__)


def failure_message(error: ProviderError) -> str:
    """What the provider said, in its words, masked: the message a failure shows."""
    return mask_text(error.provider_message or str(error))


def error_detail(error: ProviderError, reason: str) -> dict[str, Any]:
    """The ``error`` of a failure event for what the provider answered."""
    return failure_detail(
        reason, status=error.status, code=error.code, message=failure_message(error)
    )


@dataclass(frozen=True)
class TerminalPublisher:
    """Publishes the terminal event of one task message."""

    events: EventPublisher
    store: JobStore
    task_id: str
    attempts: int
    #: The job the message names; None when its payload names none that can be read.
    job: JobKey | None
    merchant_uid: str | None

    @property
    def imp_uid(self) -> str | None:
        """The V1 payment's id, for log lines; None for another kind of job, or none."""
        return self.job.imp_uid if self.job is not None else None

    def issued_duplicate(self, receipt: Mapping[str, Any]) -> Published:
        """This message repeated a payment whose receipt exists."""
        return self._publish(ISSUED, duplicate=True, detail={"receipt": dict(receipt)})

    def invalid_payload(self, error: InvalidPayload) -> Published:
        """The payload can never be issued as it is."""
        return self._publish(FAILED, duplicate=False, detail=invalid_detail(error))

    def refused(self, reason: str, message: str) -> Published:
        """This message repeated a payment that cannot be issued again (cancelled)."""
        detail = failure_detail(reason, status=None, code=None, message=message)
        return self._publish(FAILED, duplicate=True, detail=detail)

    def id_conflict(self, message: str) -> Published:
        """This message's id names a job that issued for another sale: not its duplicate."""
        detail = failure_detail(ID_CONFLICT, status=None, code=None, message=message)
        return self._publish(FAILED, duplicate=False, detail=detail)

    def finish(
        self,
        *,
        fence: int,
        issued: Receipt | None = None,
        duplicate: bool = False,
        error: ProviderError | None = None,
        reason: str = "",
    ) -> bool:
        """End the owned job as issued (``issued``) or failed (``error``, ``reason``).

        False when the claim was fenced out: another task owns the job now.
        """
        assert self.job is not None
        if issued is not None:
            state, event_type, detail = "issued", ISSUED, {"receipt": issued.as_dict()}
        else:
            assert error is not None
            state, event_type, detail = "failed", FAILED, error_detail(error, reason)
        entry = self.store.finish(
            self.job,
            fence=fence,
            state=state,
            task_id=self.task_id,
            event_type=event_type,
            data=self._data(duplicate=duplicate, detail=detail),
            receipt=detail.get("receipt"),
            error=detail.get("error"),
            settled=issued is not None,
        )
        return entry is not None

    def cancelled_duplicate(self, receipt: Mapping[str, Any] | None) -> Published:
        """This cancellation repeated one that already happened."""
        return self._publish(
            CANCELLED, duplicate=True, detail={"receipt": dict(receipt) if receipt else None}
        )

    def cancel_invalid(self, error: InvalidPayload) -> Published:
        """The cancellation payload is malformed."""
        return self._publish(CANCEL_FAILED, duplicate=False, detail=invalid_detail(error))

    def finish_cancelled(
        self,
        *,
        fence: int,
        cancelled: Receipt | None,
        reissued: Receipt | None = None,
        reissue_failure: Mapping[str, Any] | None = None,
        settled: bool | None = None,
    ) -> bool:
        """End a cancellation: ``cancelled``, and after a partial refund the new receipt.

        Both events are one store transition. A re-issue that failed for good
        (``reissue_failure``: the failure event's detail) leaves the job failed
        (replayable) with its failure event, and its last request unsettled unless
        ``settled`` (one never sent leaves only the answered DELETE behind).
        """
        assert self.job is not None
        cancelled_data = self._data(
            duplicate=False, detail={"receipt": cancelled.as_dict() if cancelled else None}
        )
        extra: tuple[str, Mapping[str, Any]] | None = None
        state, receipt, error = "cancelled", cancelled.as_dict() if cancelled else None, None
        if reissued is not None:
            state, receipt = "issued", reissued.as_dict()
            extra = (ISSUED, self._data(duplicate=False, detail={"receipt": receipt}))
        elif reissue_failure is not None:
            state, error = "failed", reissue_failure["error"]
            extra = (FAILED, self._data(duplicate=False, detail=dict(reissue_failure)))
        entry = self.store.finish(
            self.job,
            fence=fence,
            state=state,
            task_id=self.task_id,
            event_type=CANCELLED,
            data=cancelled_data,
            receipt=receipt,
            error=error,
            extra_event=extra,
            settled=reissue_failure is None if settled is None else settled,
        )
        return entry is not None

    def finish_refund_stale(self, *, fence: int, failed: bool) -> bool:
        """A refund an earlier one already covered, on a job with no live receipt (its
        balance not issued yet, or refused): a duplicate, and the job as it was, failed
        (a dead letter still) or cancelled (its confirmation still to issue the balance)."""
        assert self.job is not None
        entry = self.store.finish(
            self.job,
            fence=fence,
            state="failed" if failed else "cancelled",
            task_id=self.task_id,
            event_type=CANCELLED,
            data=self._data(duplicate=True, detail={"receipt": None}),
            settled=True,
        )
        return entry is not None

    def finish_cancel_duplicate(
        self, *, fence: int, live: Receipt, earlier: Mapping[str, Any] | None
    ) -> bool:
        """A refund already reflected by the live receipt: a duplicate; the job stays issued.

        The event carries the receipt the earlier handling cancelled, when known.
        """
        assert self.job is not None
        entry = self.store.finish(
            self.job,
            fence=fence,
            state="issued",
            task_id=self.task_id,
            event_type=CANCELLED,
            data=self._data(duplicate=True, detail={"receipt": dict(earlier) if earlier else None}),
            receipt=live.as_dict(),
            settled=True,
        )
        return entry is not None

    def finish_cancel_failed(
        self, *, fence: int, error: ProviderError, reason: str, live: Receipt | None = None
    ) -> bool:
        """The receipt could not be cancelled: it stays live, and the job issued.

        The store lists it with the dead letters, so that a refunded payment's
        live receipt is seen, and ``cashreceipt replay`` sends the cancellation again.
        ``live``: the receipt the cancellation's lookup found live. The job records it,
        as its issue would have, had that issue's worker not died before recording it.
        """
        detail = error_detail(error, reason)
        return self._finish_cancel_failed(fence=fence, detail=detail, live=live)

    def finish_unrun(self, *, fence: int, op: str, reason: str, message: str) -> bool:
        """End the owned job without running it (its message expired, or was revoked).

        An issue ends ``failed``; a cancellation ends as one that failed for good
        (``cancel_failed``, the receipt live). Either is replayable, like any failure.
        """
        detail = failure_detail(reason, status=None, code=None, message=message)
        if op == "cancel":
            return self._finish_cancel_failed(fence=fence, detail=detail)
        # Its failure is its own: the issue messages waiting on the job did run, and
        # one of them takes the job over rather than inherit an expiry or a revoke.
        return self._finish_failure(
            fence=fence, state="failed", event_type=FAILED, detail=detail, to_waiter=True
        )

    def unrun(self, *, op: str, reason: str, message: str) -> Published:
        """This message was never run, and owns no job to end: its event alone."""
        detail = failure_detail(reason, status=None, code=None, message=message)
        event_type = CANCEL_FAILED if op == "cancel" else FAILED
        return self._publish(event_type, duplicate=False, detail=detail)

    def _finish_cancel_failed(
        self, *, fence: int, detail: dict[str, Any], live: Receipt | None = None
    ) -> bool:
        # A job with no receipt was never issued: recorded ``issued``, the confirmation
        # that follows would be a duplicate with no receipt, and none would ever be
        # issued. It ends failed, which a new confirmation re-opens (issue 14, finding 10).
        # A receipt the lookup found live is the job's, recorded or not: failed, a
        # confirmation would POST a second one (model defect 5).
        assert self.job is not None
        view = self.store.view(self.job)
        known = live is not None or (view is not None and view.has_receipt)
        return self._finish_failure(
            fence=fence,
            state="issued" if known else "failed",
            event_type=CANCEL_FAILED,
            detail=detail,
            receipt=live.as_dict() if live is not None else None,
        )

    def _finish_failure(
        self,
        *,
        fence: int,
        state: str,
        event_type: str,
        detail: dict[str, Any],
        to_waiter: bool = False,
        receipt: dict[str, Any] | None = None,
    ) -> bool:
        assert self.job is not None
        entry = self.store.finish(
            self.job,
            fence=fence,
            state=state,
            task_id=self.task_id,
            event_type=event_type,
            data=self._data(duplicate=False, detail=detail),
            receipt=receipt,
            error=detail["error"],
            to_waiter=to_waiter,
        )
        return entry is not None

    def _data(self, *, duplicate: bool, detail: dict[str, Any]) -> dict[str, Any]:
        return event_data(
            task_id=self.task_id,
            job=self.job,
            merchant_uid=self.merchant_uid,
            attempts=self.attempts,
            duplicate=duplicate,
            detail=detail,
            occurred_at=self.store.now(),
        )

    def _publish(self, event_type: str, *, duplicate: bool, detail: dict[str, Any]) -> Published:
        published = self.events.publish_terminal(
            event_type=event_type,
            task_id=self.task_id,
            job=self.job,
            merchant_uid=self.merchant_uid,
            attempts=self.attempts,
            duplicate=duplicate,
            detail=detail,
        )
        if not published.new:
            log.warning(
                "task %s already published its outcome as %s; nothing new published",
                self.task_id,
                published.entry_id,
            )
        return published
