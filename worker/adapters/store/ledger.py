"""The receipt ledger: one record per payment in Redis, the source of truth for "done or not".

Celery on Redis can lose a message (kombu's BRPOP and its unacked HSET are two
round trips; a failed retry publish is dropped) and routinely runs one twice
(visibility timeout, redelivery). i'mport V1 has no idempotency key. So the
state of every receipt job lives here, and every transition is one Lua script
(in worker/adapters/store/lua/), so concurrent duplicates take exactly one path::

    (none) ─claim─▶ in_flight ─finish─▶ issued
       │              │  ▲     └─finish─▶ failed ─receive/claim─▶ (re-opened)
    receive         park │ claim (lease passed, or the fence handed on)
       ▼              ▼  │
    received ◀────────┘──┘   (the sweeper re-sends received jobs when due)

A record (hash ``cash_receipt:ledger:<imp_uid>``) holds the state, the task id
of the message that owns the job, a fencing token (``fence``, bumped on every
claim, so a worker that lost its claim cannot finish the job), the attempt
count, the payload (identifier sealed), the last error, the receipt, and
timestamps. ``cash_receipt:index:due`` (a sorted set of receipt keys,
``iamport:<imp_uid>``) holds, for every non-terminal job, when the sweeper should
look at it again: a lease deadline for in-flight jobs, a next-attempt time for
parked ones. Every key is named in :mod:`worker.adapters.store.keys`.

The terminal transition and its XADD happen in one script, keyed by the task
id (the marker of :mod:`worker.adapters.store.events`): a redelivered message whose task
already ended publishes nothing new, and exactly one event per issued payment
is not a duplicate.

A refund is the same job under ``op`` ``cancel`` (its payload in ``cancel``):
recorded ``received`` before it is sent (:meth:`Ledger.receive_cancel`), or,
while another task holds the job, kept in ``pending_cancel*`` until that job
ends issued. Only a full refund ends the job's receipts for good: a job
``cancelled`` by a partial refund (nothing was left to re-issue) re-opens for
the next issue, and an issue recorded while it ran (``pending_issue*``) owns
the job at once. A final ``cancel_failed`` leaves the job ``issued`` and in the
dead-job index (the dead letters of the ledger).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from worker.adapters.store import lua
from worker.adapters.store.clock import ClockOffset, offset_ms, redis_now, redis_now_ms
from worker.adapters.store.events import task_event
from worker.adapters.store.keys import (
    DEAD_JOBS_KEY,
    DUE_KEY,
    TERMINAL_PREFIX,
    history_of,
    record_key,
    second_terminal_key,
    status_of,
    terminal_key,
    waiters_of,
)
from worker.adapters.store.once import OnceScript
from worker.adapters.store.record import (
    answered_fields,
    cancelled_fields,
    job_view,
    sent_fields,
)
from worker.adapters.store.redis_client import as_text
from worker.config.defaults import JOB_HISTORY_LENGTH
from worker.core.events import CANCEL_FAILED, task_end_of, waiter_event
from worker.core.ports import Claim, ClaimKind, JobView, TaskEnd
from worker.core.types import JobKey, Receipt

#: The message header that hands a claimed job on to the next message of its
#: task (a retry, a sweeper re-send): the fence it was handed on with.
FENCE_HEADER = "ledger_fence"


@dataclass(frozen=True)
class DueJob:
    """A job the sweeper must re-send: it is parked and due, or its owner's lease passed."""

    job: JobKey
    state: str
    task_id: str
    payload: dict[str, Any]
    attempts: int
    op: str = "issue"
    #: The fence when it was handed out: the re-sent message carries it.
    fence: int = 0

    @property
    def imp_uid(self) -> str | None:
        """The V1 payment's id; None for another kind of job."""
        return self.job.imp_uid


class Ledger:
    """The ledger's transitions, each one Lua script (worker/adapters/store/lua/).

    The core's :class:`~worker.core.ports.JobStore`, by structure: mypy checks it
    where the ledger is handed to the core.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str,
        event_retention_seconds: int,
        retention_seconds: int,
        lease_seconds: float,
        clock_offset: ClockOffset | None = None,
    ) -> None:
        """``clock_offset``: test only (:class:`~worker.adapters.store.clock.ClockOffset`),
        moves the ledger's clock, Redis's ``TIME``; production passes none."""
        self._redis = client
        self._offset = clock_offset
        self._stream = stream
        self._event_retention = event_retention_seconds
        self._retention = retention_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._receive = OnceScript(client, "receive")
        self._receive_cancel = OnceScript(client, "receive_cancel")
        self._claim = OnceScript(client, "claim")
        self._hold = OnceScript(client, "hold")
        self._finish = OnceScript(client, "finish")
        self._due = OnceScript(client, "due")
        self._note = client.register_script(lua.source("note"))

    def now(self) -> float:
        """The time by the clock every transition is stamped with (epoch seconds).

        Redis's clock, never this host's (issue 14, finding 6: a host whose clock ran
        fast took over live leases), plus a test's ``clock_offset``, which moves it
        without a sleep. Redis's own expiries (markers, retention) keep real time.
        """
        return redis_now(self._redis, self._offset)

    @property
    def _offset_ms(self) -> int:
        """The argument each timed script adds to ``TIME`` (0 but in tests)."""
        return offset_ms(self._offset)

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds before the sweeper may hand the job to another task."""
        return self._lease_ms / 1000

    def receive(
        self, job: JobKey | str, *, task_id: str, payload: Mapping[str, Any], resend_after: float
    ) -> str:
        """Record a job before it is enqueued; returns the state it is in now.

        Only a new or failed job becomes ``received``; an existing one is left
        as it is (its task will report it as a duplicate). ``done`` means this
        task already ended: nothing is recorded and nothing is to be sent.
        """
        result = self._receive(
            keys=[_record(job), DUE_KEY, _waiters(job), terminal_key(task_id)],
            args=[
                task_id,
                json.dumps(payload),
                self._offset_ms,
                int(resend_after * 1000),
                _receipt_key(job),
            ],
        )
        return as_text(result)

    def receive_cancel(
        self, job: JobKey | str, *, task_id: str, cancel: Mapping[str, Any], resend_after: float
    ) -> str:
        """Record a cancellation before it is enqueued; returns the job's state now.

        A job nobody holds becomes this cancellation's, ``received`` and due in
        ``resend_after`` seconds, so the sweeper re-sends a lost message. While
        another task holds the job, the cancellation is kept beside it and takes
        the job over if it ends issued. ``done`` means this task already ended.
        """
        result = self._receive_cancel(
            keys=[_record(job), DUE_KEY, terminal_key(task_id)],
            args=[
                task_id,
                json.dumps(cancel),
                self._offset_ms,
                int(resend_after * 1000),
                _receipt_key(job),
            ],
        )
        return as_text(result)

    def claim(
        self,
        job: JobKey | str,
        *,
        task_id: str,
        payload: Mapping[str, Any],
        op: str = "issue",
        fence: int | None = None,
    ) -> Claim:
        """Try to own the job for one attempt of ``op`` (``issue`` or ``cancel``).

        ``fence`` is the one the message carries (header ``ledger_fence``): only
        a message carrying the current fence may take over a live lease of its
        own task.
        """
        result = self._claim(
            keys=[
                _record(job),
                DUE_KEY,
                terminal_key(task_id),
                _waiters(job),
                DEAD_JOBS_KEY,
            ],
            args=[
                task_id,
                json.dumps(payload),
                self._offset_ms,
                self._lease_ms,
                _receipt_key(job),
                op,
                "" if fence is None else str(fence),
            ],
        )
        kind = ClaimKind(as_text(result[0]))
        if kind is ClaimKind.CLAIMED:
            return Claim(
                kind,
                fence=int(result[1]),
                attempt=int(result[2]),
                resumed=as_text(result[3]) == "1",
                op=op,
            )
        if kind in {ClaimKind.ISSUED, ClaimKind.CANCELLED} and len(result) > 1:
            return Claim(kind, receipt=json.loads(as_text(result[1])) if result[1] else None)
        return Claim(kind)

    def extend(
        self, job: JobKey | str, *, fence: int, seconds: float, error: Mapping[str, Any]
    ) -> bool:
        """Keep the claim through a short retry countdown plus one more attempt."""
        until = redis_now_ms(self._redis, self._offset) + int(seconds * 1000) + self._lease_ms
        return self._hold_job(job, fence, due=until, state="in_flight", error=error)

    def park(
        self, job: JobKey | str, *, fence: int, until: float, error: Mapping[str, Any]
    ) -> bool:
        """Hand the job back to the ledger until ``until`` (epoch s); the sweeper resumes it."""
        return self._hold_job(job, fence, due=int(until * 1000), state="received", error=error)

    def _hold_job(
        self, job: JobKey | str, fence: int, *, due: int, state: str, error: Mapping[str, Any]
    ) -> bool:
        result = self._hold(
            keys=[_record(job), DUE_KEY, _history(job)],
            args=[
                fence,
                self._offset_ms,
                due,
                state,
                json.dumps(error, ensure_ascii=False),
                _receipt_key(job),
                JOB_HISTORY_LENGTH,
            ],
        )
        return bool(result)

    def finish(
        self,
        job: JobKey | str,
        *,
        fence: int,
        state: str,
        task_id: str,
        event_type: str,
        data: Mapping[str, Any],
        receipt: Mapping[str, Any] | None = None,
        error: Mapping[str, Any] | None = None,
        extra_event: tuple[str, Mapping[str, Any]] | None = None,
        settled: bool = False,
        to_waiter: bool = False,
    ) -> str | None:
        """End the job and publish its event, atomically; None when this claim was fenced out.

        ``extra_event`` is a second event of the same transition (the new receipt
        of a partial refund), published once under its own marker. ``settled``:
        the outcome settles the job's last POST or DELETE (a receipt issued or
        cancelled), so its ``sent_at`` goes; a job that ends otherwise keeps it,
        and a later claim waits out the bound from it and looks first.
        ``to_waiter``: a failure that is the owner's alone hands the job to a
        waiting issue message, due (for the sweeper, should that message be lost)
        a lease from now.
        """
        waiter = waiter_event(
            state=state, event_type=event_type, data=data, extra_event=extra_event
        )
        result = self._finish(
            keys=[
                _record(job),
                DUE_KEY,
                self._stream,
                terminal_key(task_id),
                _status(job),
                _waiters(job),
                DEAD_JOBS_KEY,
                _history(job),
                second_terminal_key(task_id),
            ],
            args=[
                fence,
                state,
                event_type,
                json.dumps(data, ensure_ascii=False),
                self._offset_ms,
                self._event_retention,
                "",
                json.dumps(receipt) if receipt is not None else "",
                json.dumps(error, ensure_ascii=False) if error is not None else "",
                self._retention,
                _receipt_key(job),
                extra_event[0] if extra_event else "",
                json.dumps(extra_event[1], ensure_ascii=False) if extra_event else "",
                TERMINAL_PREFIX,
                waiter.event_type,
                json.dumps(waiter.data, ensure_ascii=False),
                CANCEL_FAILED,
                "1" if settled else "",
                "1" if waiter.live_receipt else "",
                JOB_HISTORY_LENGTH,
                self._lease_ms if to_waiter else "",
            ],
        )
        if int(result[0]) == -1:
            return None
        return as_text(result[1])

    def settled_claim(self, job: JobKey | str, *, task_id: str, state: str, op: str) -> Claim:
        """What a claim would find for a message of ``op`` that :meth:`receive` (or
        :meth:`receive_cancel`) answered ``state`` (``issued``, ``cancelled``) and did not
        record: the producer ends its task with it, as the worker would.

        ``done`` when the job ended under this very task (its marker expired): its one
        event is out, as the claim script answers such a late copy.
        """
        record = self.raw_record(job) or {}
        if record.get("task_id") == task_id:
            return Claim(ClaimKind.DONE, op=op)
        receipt = record.get("receipt")
        return Claim(ClaimKind(state), op=op, receipt=json.loads(receipt) if receipt else None)

    def due_jobs(self, *, limit: int, regrace_seconds: float) -> list[DueJob]:
        """Jobs the sweeper must re-send now; each is handed out once per ``regrace_seconds``."""
        now = redis_now_ms(self._redis, self._offset)
        members = self._redis.zrangebyscore(DUE_KEY, 0, now, start=0, num=limit)
        jobs = []
        for member in members:
            job = JobKey.parse(as_text(member))
            if job is None:
                continue  # a kind of job this release does not run
            found = self._due(
                keys=[_record(job), DUE_KEY],
                args=[self._offset_ms, int(regrace_seconds * 1000), as_text(member)],
            )
            if not found:
                continue
            state, task_id, payload, attempts, op, fence = (as_text(part) for part in found)
            jobs.append(
                DueJob(job, state, task_id, json.loads(payload), int(attempts), op, int(fence))
            )
        return jobs

    def task_end(self, task_id: str) -> TaskEnd | None:
        """What the task's terminal event named (:func:`task_end_of`), while its marker lasts."""
        return task_end_of(task_event(self._redis, stream=self._stream, task_id=task_id))

    def view(self, job: JobKey | str) -> JobView | None:
        """The job as the core reads it (:mod:`worker.adapters.store.record`), or None."""
        found = self.raw_record(job)
        return job_view(JobKey.of(job), found) if found is not None else None

    def note_sent(
        self,
        job: JobKey | str,
        *,
        fence: int,
        at: float,
        op: str,
        delete: bool = False,
        operation: str | None = None,
    ) -> bool:
        """A POST or DELETE of ``op`` goes out at ``at``: kept until the provider answers it."""
        fields = sent_fields(at=at, op=op, delete=delete, operation=operation)
        return self._note_fields(job, fence, fields)

    def stop_waiting(self, job: JobKey | str, task_id: str) -> None:
        """Take ``task_id`` off the job's waiters."""
        self._redis.srem(_waiters(job), task_id)

    def note_answered(self, job: JobKey | str, *, fence: int) -> bool:
        """The provider answered the job's last request: nothing is left to settle."""
        return self._note_fields(job, fence, answered_fields())

    def note_cancelled(
        self,
        job: JobKey | str,
        *,
        fence: int,
        receipt: Receipt | None,
        balance: Mapping[str, Any] | None = None,
    ) -> bool:
        """A refund's cancel step is done: the step, what it cancelled and the balance it
        leaves, in one write."""
        return self._note_fields(job, fence, cancelled_fields(receipt, balance))

    def _note_fields(self, job: JobKey | str, fence: int, fields: Mapping[str, str]) -> bool:
        """Several fields of a step in one fenced write: one round trip, no torn step."""
        pairs = [item for pair in fields.items() for item in pair]
        return bool(self._note(keys=[_record(job)], args=[fence, *pairs]))

    def raw_record(self, job: JobKey | str) -> dict[str, str] | None:
        """A payment's record as Redis keeps it (text fields), or None.

        The store's own reads and the layout tests use it; the core reads :meth:`view`.
        """
        raw = self._redis.hgetall(_record(job))
        if not raw:
            return None
        return {as_text(key): as_text(value) for key, value in raw.items()}


def _receipt_key(job: JobKey | str) -> str:
    """The job's member in the indexes."""
    return JobKey.of(job).receipt_key


def _record(job: JobKey | str) -> str:
    return record_key(_receipt_key(job))


def _waiters(job: JobKey | str) -> str:
    """The job's waiters: issue messages that hear its outcome as theirs (claim.lua)."""
    return waiters_of(_receipt_key(job))


def _history(job: JobKey | str) -> str:
    return history_of(_receipt_key(job))


def _status(job: JobKey | str) -> str:
    return status_of(_receipt_key(job))
