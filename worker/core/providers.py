"""Which provider runs a job: the ones a worker serves (``PROVIDERS``), by the job's key.

One worker serves every provider in ``PROVIDERS``; a job names its own
(its key's ``provider``). A job for a provider the worker does not
serve is not dropped and not guessed at: it meets :class:`Unconfigured`, whose every
call raises :class:`~worker.core.errors.NotConfigured` before anything is sent, so
the runner ends it as any permanent failure: one failure event, reason
``not_configured``, the job failed with its payload kept, and ``cashreceipt replay``
sends it again once the workers serve the provider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from worker.core.errors import NotConfigured
from worker.core.ports import OperationId, Provider
from worker.core.types import JobKey, Payment, Receipt, ReceiptOrder


class Unconfigured:
    """The provider of a job this worker does not serve: every call refuses."""

    clean_answer: tuple[int | None, int | None] = (None, None)

    def __init__(self, name: str) -> None:
        self.name = name

    def _refuse(self) -> NotConfigured:
        return NotConfigured(
            f"this worker does not serve provider {self.name!r} (PROVIDERS): nothing was "
            "sent; replay the job once every worker on the queue serves it"
        )

    def issue_receipt(
        self, request: ReceiptOrder, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        raise self._refuse()

    def find_receipt(self, job: JobKey) -> Receipt | None:
        raise self._refuse()

    def list_receipts(self, job: JobKey) -> list[Receipt]:
        raise self._refuse()

    def get_payment(self, imp_uid: str) -> Payment:
        raise self._refuse()

    def cancel_receipt(
        self, job: JobKey, *, operation: OperationId, on_send: Callable[[], None]
    ) -> Receipt:
        raise self._refuse()


def provider_for(served: Mapping[str, Provider], job: JobKey | None) -> Provider:
    """The provider that runs ``job``: the one it names when served, else one that
    refuses (a job that names none runs nothing, and any provider will do)."""
    if job is None:
        return next(iter(served.values()), Unconfigured("none"))
    return served.get(job.provider) or Unconfigured(job.provider)
