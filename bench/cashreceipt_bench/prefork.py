"""The prefork baseline: our task under Celery's default worker configuration.

``celery -A cashreceipt_bench.prefork worker`` is our worker as Celery would run it
out of the box: the prefork pool with one child per core, early acks and a
prefetch of 4 (Celery's defaults), task events off. Everything else (the
ledger, sealing, the client) is ours, so the ratio to it is what the I/O pool
and its sizing buy. Not a configuration to run: early acks lose a message
whose worker dies mid-task.
"""

from __future__ import annotations

import os

from tasks import receipts
from worker.celery import app

app.conf.update(
    worker_pool="prefork",
    worker_concurrency=os.cpu_count() or 1,
    task_acks_late=False,
    task_reject_on_worker_lost=False,
    worker_prefetch_multiplier=4,
    worker_send_task_events=False,
    task_send_sent_event=False,
)
# The tasks ask for late acks themselves; Celery's default is early.
for _task in (receipts.issue_cash_receipt, receipts.cancel_cash_receipt):
    _task.acks_late = False

__all__ = ["app"]
