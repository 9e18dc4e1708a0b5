"""Names other systems rely on. Changing one breaks every producer and consumer.

The task and queue names live in :mod:`worker.core.contract` (the core routes by
them), and the queue's declaration on RabbitMQ in :mod:`worker.celery.queues` (it is
kombu's); this module is the path producers import them from, and adds nothing.
"""

from __future__ import annotations

from worker.celery.queues import rabbitmq_queues
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE

__all__ = ["CANCEL_TASK", "ISSUE_TASK", "QUEUE", "rabbitmq_queues"]
