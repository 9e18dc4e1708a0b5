"""How many provider calls one attempt may make: the bound the time rule counts on.

The time rule (:mod:`worker.config.timing`, README "The time rule") sizes a claim's
lease and the visibility timeout for one attempt's worst case, in requests. An issue
attempt makes at most five calls (two lookups, the POST, two lookups after an
ambiguous answer); a refund that cancels and then re-issues could make eleven, and
its lease could pass mid-attempt, letting a second worker take the job over while
the first still sends. So every attempt counts its calls, and stops before one more
would pass the bound: the job is handed on to a new message (or parked, while a
request is unsettled), which resumes from the steps the store recorded: a refund's
cancel step, an unsettled send. Nothing is sent by the call that is refused.
"""

from __future__ import annotations

from collections.abc import Callable

from worker.core.ports import OperationId, Provider
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder

#: The most provider calls (lookups, POSTs, DELETEs) one attempt makes.
MAX_PROVIDER_CALLS_PER_ATTEMPT = 5


class BudgetSpent(Exception):
    """The attempt has made as many calls as it may: the next one is not made."""


class BudgetedProvider:
    """A :class:`~worker.core.ports.Provider` that refuses the call past ``limit``.

    The runner resets it when an attempt starts; what it refuses raises
    :class:`BudgetSpent` before the call reaches the provider.
    """

    def __init__(self, provider: Provider, *, limit: int) -> None:
        self._provider = provider
        self.limit = limit
        #: The calls the current attempt has made.
        self.used = 0

    @property
    def name(self) -> str:
        return self._provider.name

    @property
    def clean_answer(self) -> tuple[int | None, int | None]:
        return self._provider.clean_answer

    def reset(self) -> None:
        """A new attempt: nothing spent."""
        self.used = 0

    def _spend(self) -> None:
        if self.used >= self.limit:
            raise BudgetSpent(f"{self.used} provider calls made, the most one attempt makes")
        self.used += 1

    def issue_receipt(
        self, request: ReceiptOrder, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        self._spend()
        return self._provider.issue_receipt(request, operation=operation, on_send=on_send)

    def find_receipt(self, job: JobKey) -> Receipt | None:
        self._spend()
        return self._provider.find_receipt(job)

    def list_receipts(self, job: JobKey) -> list[Receipt]:
        self._spend()
        return self._provider.list_receipts(job)

    def get_payment(self, imp_uid: str) -> Payment:
        self._spend()
        return self._provider.get_payment(imp_uid)

    def cancel_receipt(
        self, job: JobKey, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        self._spend()
        return self._provider.cancel_receipt(job, operation=operation, on_send=on_send)
