"""Handing a task's message back when the worker stops before the task is done.

On SIGTERM the worker stops taking messages and gives the tasks it holds
``worker_soft_shutdown_timeout`` seconds to finish (Celery's soft shutdown).
Celery then cancels what is still running. A prefork child can be killed for
that; a thread cannot, so Celery's thread pool has no way to cancel at all.
Here a cancelled task is marked instead, and stops at its next safe point:
before its next HTTP request to i'mport, or its next look at the ledger while
it waits for a duplicate. It raises :class:`HandedBack` there, and the task
hands the job back to the queue (tasks/receipts.py: a retry with the claim's
fence, or its message requeued), so another worker takes it up. Stopping at
a request boundary is what a crash would do, and is safe for the same
reason: every attempt looks at i'mport before it POSTs.

What a task is doing when Celery cancels it comes from the thread it runs
in: :func:`running` names the task for its thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from requests.adapters import HTTPAdapter


class HandedBack(Exception):
    """The worker cancelled this task: it stops here and its message goes back to the queue."""


_lock = threading.Lock()
_cancelled: set[str] = set()
_local = threading.local()


def cancel(task_id: str) -> None:
    """Ask the task ``task_id`` to stop at its next safe point."""
    with _lock:
        _cancelled.add(task_id)


@contextmanager
def running(task_id: str) -> Iterator[None]:
    """Run the body as task ``task_id`` in this thread: :func:`check` then knows whom to stop."""
    _local.task_id = task_id
    try:
        yield
    finally:
        _local.task_id = None
        with _lock:
            _cancelled.discard(task_id)


def check() -> None:
    """Raise :class:`HandedBack` when the task running in this thread was cancelled."""
    task_id = getattr(_local, "task_id", None)
    if task_id is None:
        return
    with _lock:
        cancelled = task_id in _cancelled
    if cancelled:
        raise HandedBack(f"task {task_id} was cancelled by the worker's shutdown")


class StoppableAdapter(HTTPAdapter):
    """requests' adapter, refusing to start a request for a task that was cancelled."""

    def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        check()
        return super().send(request, *args, **kwargs)
