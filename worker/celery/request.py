"""A Celery Request that never shows a payload's personal data.

Celery takes what it shows of a task's arguments from the message's
``argsrepr`` header, which the producer wrote: a bare ``send_task`` fills it
with the raw payload. That header reaches the "received" log line and its
extra data, the ``task-received`` event (Flower's UI and ``/api/*``), the
failure log context, and ``inspect active/reserved/scheduled`` (which by
default return the raw arguments themselves). This class recomputes it from
the arguments, masked, whatever the producer sent.

The protocol headers Celery shows beside them are the producer's too: a
``shadow`` name replaces the task's name in logs and Flower, and ``root_id``
and ``parent_id`` go into every task event. No task here is sent with a
shadow name, so the registered name is shown; the ids are shown only when
they have the shape Celery gives them (:func:`worker.core.masking.shown_token`).
"""

from __future__ import annotations

from typing import Any

from celery.concurrency.base import BasePool
from celery.worker.request import Request

from worker.adapters.store.ledger import FENCE_HEADER
from worker.celery import stopping
from worker.core.masking import masked_args_repr, shown_token


def carried_fence(request: Any) -> int | None:
    """The fence a task message was handed a job with (FENCE_HEADER), or None."""
    value = getattr(request, FENCE_HEADER, None)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


class MaskedRequest(Request):  # type: ignore[misc]
    """The worker's view of one task message, with masked argument reprs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = self._type
        self._request_dict["shadow"] = None
        # In the task's context too: the pool's DEBUG line prints it whole, and a retry
        # carries it on (the ids link no workflow here).
        for header in ("root_id", "parent_id"):
            self._request_dict[header] = shown_token(self._request_dict.get(header))
        self._root_id = self._request_dict["root_id"]
        self._parent_id = self._request_dict["parent_id"]
        self._argsrepr = masked_args_repr(self._args)
        self._kwargsrepr = "{}" if not self._kwargs else "<redacted>"
        # The task's own context (failure logs, retries) reads these keys.
        self._request_dict["argsrepr"] = self._argsrepr
        self._request_dict["kwargsrepr"] = self._kwargsrepr

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What remote control shows: always the masked form, even when not asked; the
        producer's exchange and routing key only in the shapes Celery gives them (the
        request itself keeps them as sent: a retry is routed by them)."""
        del safe
        info: dict[str, Any] = super().info(safe=True)
        delivery = info.get("delivery_info")
        if isinstance(delivery, dict):
            info["delivery_info"] = {
                key: shown_token(value) if isinstance(value, str) else value
                for key, value in delivery.items()
            }
        return info

    def cancel(self, pool: Any, signal: Any = None, emit_retry: bool = True) -> None:
        """Cancel the task; in a pool that cannot kill it (threads), ask it to stop.

        Celery cancels what still runs when the soft shutdown is over, and on a
        broker connection loss. Its thread pool cannot terminate a job (Celery
        raises NotImplementedError and the shutdown goes wrong), so the task is
        marked instead (:mod:`worker.celery.stopping`) and hands its message back at
        its next safe point. A task not started yet is simply never started:
        the pool drops queued work when it stops, and the message is unacked.
        """
        if type(pool).terminate_job is not BasePool.terminate_job:
            super().cancel(pool, signal=signal, emit_retry=emit_retry)
            return
        stopping.cancel(self.id)
        if self.time_start:
            self._announce_cancelled(emit_retry=emit_retry)
