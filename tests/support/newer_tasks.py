"""A task only the "newer deploy" knows: a worker started with ``-I tests.support.newer_tasks``.

Rolling-deploy tests send it while only an older worker (without this module)
runs, and check that the message waits, parked, until a worker that knows it
takes it up. It records that it ran in Redis, under its task id.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from worker.celery import app
from worker.celery.runtime import get_runtime

NEWER_TASK = "issue_cash_receipt_v2"


def ran_key(task_id: str) -> str:
    """Where the task notes that it ran."""
    return f"test:newer-task-ran:{task_id}"


@app.task(name=NEWER_TASK, bind=True, acks_late=True, ignore_result=True)
def issue_cash_receipt_v2(self: Task, payload: dict[str, Any]) -> str:
    """Note the run; the payload is not looked at."""
    del payload
    get_runtime(self.app.conf).redis.set(ran_key(str(self.request.id)), "ran", ex=3600)
    return "ran"
