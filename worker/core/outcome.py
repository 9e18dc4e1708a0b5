"""How one run of a task ended: the ``outcome`` of its log line and of its metrics.

The values are a contract (log queries and dashboards read them): they never
change. Code asks an :class:`Outcome` what it means (:attr:`Outcome.duplicate`,
:attr:`Outcome.issues`, :attr:`Outcome.cancels`) instead of comparing its text.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """The outcome of one task run."""

    #: The job's receipt was issued (or adopted: found after an ambiguous POST).
    ISSUED = "issued"
    #: The payment already had its receipt: nothing was asked of the provider.
    ISSUED_DUPLICATE = "issued:duplicate"
    #: The refund cancelled the receipt (or found none to cancel).
    CANCELLED = "cancelled"
    #: The refund repeated one already handled.
    CANCELLED_DUPLICATE = "cancelled:duplicate"
    #: A partial refund: cancelled, and a receipt issued for the balance.
    CANCELLED_REISSUED = "cancelled:reissued"
    #: A partial refund: cancelled, but the receipt for the balance failed for good.
    CANCELLED_REISSUE_FAILED = "cancelled:reissue_failed"
    #: A redelivery: this very task already published its outcome.
    DONE = "done"
    #: Not run: its task id already ended as another job's or operation's (a producer
    #: reused it); the message is set aside in ``cash_receipt:parked``.
    REUSED = "reused"
    #: Handed back for a short countdown (a Celery retry).
    RETRY = "retry"
    #: Handed back to the ledger for a long wait; the sweeper re-sends it.
    PARKED = "parked"
    #: A retry that could not be published: the message went back to the queue.
    REQUEUED = "requeued"
    #: The worker stopped: the job went back to the queue for another worker.
    HANDED_BACK = "handed_back"
    #: Ended for good, its failure event published.
    FAILED = "failed"
    #: Something unexpected raised.
    ERROR = "error"

    @property
    def duplicate(self) -> bool:
        """Nothing was asked of the provider: the job was already done."""
        return self in _DUPLICATES

    @property
    def issues(self) -> bool:
        """A receipt was issued in this run (the ``issued`` counter)."""
        return self in {Outcome.ISSUED, Outcome.CANCELLED_REISSUED}

    @property
    def cancels(self) -> bool:
        """A receipt was cancelled in this run (the ``cancelled`` counter)."""
        return self in {
            Outcome.CANCELLED,
            Outcome.CANCELLED_REISSUED,
            Outcome.CANCELLED_REISSUE_FAILED,
        }

    @property
    def troubled(self) -> bool:
        """Logged as a warning: the run failed, or something unexpected raised."""
        return self in {Outcome.FAILED, Outcome.ERROR, Outcome.REUSED}


_DUPLICATES = frozenset({Outcome.ISSUED_DUPLICATE, Outcome.CANCELLED_DUPLICATE, Outcome.DONE})
