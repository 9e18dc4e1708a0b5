"""Celery glue: the app, the kombu and Celery hooks, and the producer helper.

``celery -A worker`` finds the app here (``worker.celery.app``). The hooks are the
broker transport (:mod:`.transport`), the consumer (:mod:`.consumer`), the message
guard (:mod:`.malformed`) and the task request (:mod:`.request`); the per-process
wiring is :mod:`.runtime`. The tasks themselves live in the top-level ``tasks``.
"""

from __future__ import annotations

from worker.celery.app import app

__all__ = ["app"]
