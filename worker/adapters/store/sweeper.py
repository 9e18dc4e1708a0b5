"""The sweeper: re-sends ledger jobs that nobody is working on.

Three kinds of job wait in the ledger's due index: a producer's ``received``
job whose message never reached a worker (lost by the broker), a parked job
whose next attempt is due (an i'mport outage), and an ``in_flight`` job whose
lease passed (its worker died mid-task). Each is re-sent as a task message with
its original task id, so the job still ends in one terminal event for the
message that started it, and a message that turns up late finds the outcome
already published.

It runs in every worker as a thread, every ``SWEEP_INTERVAL`` seconds; a Redis
lock lets one sweep run at a time across all workers. Re-sent messages get a
random countdown within the interval, so that jobs resumed after an outage do
not reach i'mport in the same second.
"""

from __future__ import annotations

import logging
import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import redis

from worker.adapters.store import lua
from worker.adapters.store.dead_messages import expire_dead_messages
from worker.adapters.store.keys import SWEEPER_LOCK_KEY
from worker.adapters.store.layout import fold_layout_1_indexes
from worker.adapters.store.ledger import FENCE_HEADER, Ledger
from worker.core.contract import CANCEL_TASK, ISSUE_TASK, QUEUE
from worker.core.masking import masked_args_repr
from worker.core.types import JobKey

log = logging.getLogger(__name__)

BATCH = 500


class Sweeper:
    """One sweep at a time across the fleet; see the module docstring."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: redis.Redis,
        send: Callable[..., Any],
        interval: float,
        rand: Callable[[], float] = random.random,
        resent: Callable[[list[JobKey]], object] = lambda jobs: None,
    ) -> None:
        self._ledger = ledger
        self._redis = client
        self._send = send
        self._interval = interval
        self._rand = rand
        self._resent = resent
        self._release = client.register_script(lua.source("release_lock"))
        self._stop = threading.Event()
        self._stopping = False

    def sweep_once(self) -> int:
        """Re-send every due job, if this process holds the lock; returns how many."""
        token = uuid.uuid4().hex
        hold_ms = max(1000, int(self._interval * 2000))
        if not self._redis.set(SWEEPER_LOCK_KEY, token, nx=True, px=hold_ms):
            return 0
        try:
            # An older producer, not yet upgraded, still records its jobs in layout 1's index.
            fold_layout_1_indexes(self._redis)
            jobs = self._ledger.due_jobs(limit=BATCH, regrace_seconds=self._ledger.lease_seconds)
            for job in jobs:
                self._send(
                    CANCEL_TASK if job.op == "cancel" else ISSUE_TASK,
                    args=[job.payload],
                    task_id=job.task_id,
                    queue=QUEUE,
                    countdown=self._rand() * self._interval,
                    argsrepr=masked_args_repr([job.payload]),
                    kwargsrepr="{}",
                    # The message the job is handed to: it may take over a lease
                    # of its own task that has not passed yet (FENCE_HEADER).
                    headers={FENCE_HEADER: job.fence},
                )
            if jobs:
                log.info("sweeper re-sent %d job(s) from the ledger", len(jobs))
                self._resent([job.job for job in jobs])
            if expire_dead_messages(self._redis):
                log.info("sweeper dropped parked messages past their retention")
            return len(jobs)
        finally:
            self._release(keys=[SWEEPER_LOCK_KEY], args=[token])

    def run(self) -> None:
        """Sweep every interval until :meth:`stop`; a failed sweep is logged and retried."""
        while not self._stop.wait(self._interval):
            try:
                self.sweep_once()
            except Exception:
                log.exception("sweep failed; trying again in %.1fs", self._interval)

    def start(self) -> threading.Thread:
        """Run in a daemon thread."""
        thread = threading.Thread(target=self.run, name="cash-receipt-sweeper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Stop after the current sweep; safe to call from a signal handler, re-entered.

        It runs in Celery's shutdown signal handler. A second signal (Ctrl-C, then a
        supervisor's SIGTERM) runs that handler again in the same thread, possibly in
        the middle of ``Event.set``, whose lock is not re-entrant: the worker hung
        there until SIGKILL. The flag is set before the lock is taken, so a second
        call returns at once.
        """
        if self._stopping:
            return
        self._stopping = True
        self._stop.set()
