"""The producer helper, at the path producers import it from.

The code lives in :mod:`worker.celery.producer`; this module keeps
``from worker.producer import enqueue_issue, enqueue_cancel`` working and adds nothing.
"""

from __future__ import annotations

from worker.celery.producer import TaskIdReused, enqueue_cancel, enqueue_issue

__all__ = ["TaskIdReused", "enqueue_cancel", "enqueue_issue"]
