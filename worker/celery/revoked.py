"""Messages Celery discards without running them: past their ``expires``, or revoked.

Celery acks such a message and sends ``task_revoked``, and nothing of ours ran: no
event, and the ledger job the producer recorded stayed ``received`` for the sweeper
to re-send. This hook ends the message as :mod:`worker.core.unrun` decides: one
failure event, reason ``expired`` or ``revoked``, and its job failed with it.

A task terminated while it runs (``revoke(terminate=True)``) is not handled here:
its run goes on (the thread pool cannot kill it) and ends the message itself.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import signals

from worker.celery.malformed import message_terminal
from worker.celery.request import carried_fence
from worker.celery.runtime import get_runtime
from worker.core.contract import CANCEL_TASK, ISSUE_TASK
from worker.core.unrun import EXPIRED, REVOKED, end_unrun

log = logging.getLogger(__name__)


@signals.task_revoked.connect
def end_discarded_message(
    sender: Any = None,
    request: Any = None,
    terminated: bool = False,
    expired: bool = False,
    **_: Any,
) -> None:
    """One terminal event for a message of ours that Celery discarded without running it."""
    name = getattr(sender, "name", None)
    if name not in {ISSUE_TASK, CANCEL_TASK} or request is None or terminated:
        return
    task_id = getattr(request, "id", None)
    if not isinstance(task_id, str):
        return
    args = getattr(request, "args", None) or ()
    raw = args[0] if isinstance(args, list | tuple) and args else None
    reason = EXPIRED if expired else REVOKED
    terminal = message_terminal(sender, task_id, getattr(request, "retries", 0), raw)
    op = "cancel" if name == CANCEL_TASK else "issue"
    try:
        done = end_unrun(
            get_runtime(sender.app.conf).ledger,
            terminal,
            op=op,
            reason=reason,
            carried_fence=carried_fence(request),
        )
    except redis.RedisError:
        # Celery has acked the message already. A job the producer recorded stays
        # due, and the sweeper re-sends it: it then ends in its own one event.
        log.exception("could not end %s message %s (%s)", name, task_id, reason)
        return
    log.warning(
        "%s message %s was not run (%s): %s (imp_uid %s)",
        name,
        task_id,
        reason,
        done.value,
        terminal.imp_uid,
    )
