"""Names other systems rely on. Changing one breaks every producer and consumer."""

from __future__ import annotations

from kombu.entity import Exchange, Queue

#: The task name producers in any language send.
ISSUE_TASK = "issue_cash_receipt"
#: The queue the task is routed to and workers consume.
QUEUE = "cash_receipts"
#: The task that cancels a payment's receipt (and re-issues after a partial refund).
CANCEL_TASK = "cancel_cash_receipt"


def rabbitmq_queues(queue_type: str = "quorum") -> list[Queue]:
    """The queue on RabbitMQ, declared the same way by workers and producers.

    RabbitMQ refuses to re-declare a queue or exchange with other arguments
    (PRECONDITION_FAILED), so a producer on RabbitMQ sets ``task_queues`` to
    this too. Durable, bound to a topic exchange of the same name (Celery's
    native delayed delivery needs one), and a quorum queue unless ``classic``.
    """
    arguments = {"x-queue-type": "quorum"} if queue_type == "quorum" else None
    return [
        Queue(
            QUEUE,
            Exchange(QUEUE, type="topic", durable=True),
            routing_key=QUEUE,
            durable=True,
            queue_arguments=arguments,
        )
    ]
