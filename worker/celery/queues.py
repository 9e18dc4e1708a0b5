"""The queue on RabbitMQ, declared the same way by workers and producers.

Producers import it from :mod:`worker.contract`, the path of the names other systems
rely on; the code is kombu's, so it lives with the Celery glue.
"""

from __future__ import annotations

from kombu.entity import Exchange, Queue

from worker.core.contract import QUEUE


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
