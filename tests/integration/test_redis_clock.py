"""The ledger runs on Redis's clock, never a host's (issue 14, finding 6).

A host whose clock ran fast stamped leases and due times an hour ahead: it took over
every live lease at once (two POSTs for one payment), and a job it recorded was due
an hour late. Now every script reads Redis's ``TIME``; tests move that clock with a
``ClockOffset`` only they can build.
"""

from __future__ import annotations

import pytest

from tests.support.redis_server import RedisServer
from tests.support.skewed_host import on_skewed_host
from worker.adapters.store.clock import ClockOffset, redis_now
from worker.adapters.store.keys import DUE_KEY, payment_receipt_key
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.views import oldest_due_seconds, stuck
from worker.core.types import JobKey

pytestmark = pytest.mark.integration

PAYLOAD = {"imp_uid": "x", "identifier_sealed": "gAAAA"}
HOUR = 3600.0
LEASE = 30.0


def _ledger(server: RedisServer, offset: ClockOffset | None = None) -> Ledger:
    return Ledger(
        server.client(),
        stream="test.skewed.events",
        event_retention_seconds=3600,
        retention_seconds=600,
        lease_seconds=LEASE,
        clock_offset=offset,
    )


def test_a_host_whose_clock_runs_fast_cannot_take_over_a_live_lease(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """A claim made from a host an hour fast finds the job busy: the lease is Redis's."""
    owner = _ledger(redis_server)
    assert owner.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind == "claimed"
    answer = on_skewed_host(
        redis_server.url, skew=HOUR, call="claim", imp_uid=imp_uid, task_id=f"{imp_uid}-t2"
    )
    assert answer == "busy"
    view = owner.view(imp_uid)
    assert view is not None and view.task_id == f"{imp_uid}-t1"


def test_a_host_whose_clock_runs_slow_records_a_job_due_by_redis(
    redis_server: RedisServer, imp_uid: str
) -> None:
    """A job recorded from a host an hour slow is due in its resend time, not an hour early."""
    on_skewed_host(
        redis_server.url, skew=-HOUR, call="receive", imp_uid=imp_uid, task_id=f"{imp_uid}-t1"
    )
    client = redis_server.client()
    due = client.zscore(DUE_KEY, payment_receipt_key(imp_uid))
    assert due is not None
    assert 55 <= due / 1000 - redis_now(client) <= 60
    assert JobKey.payment(imp_uid) not in stuck(client, older_than=0)


def test_the_test_offset_moves_every_script_clock(redis_server: RedisServer, imp_uid: str) -> None:
    """A lease passes, a job comes due and grows overdue only when the offset moves."""
    offset = ClockOffset()
    first, second = _ledger(redis_server, offset), _ledger(redis_server, offset)
    client = redis_server.client()
    assert first.claim(imp_uid, task_id=f"{imp_uid}-t1", payload=PAYLOAD).kind == "claimed"
    assert second.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD).kind == "busy"
    assert [
        job for job in second.due_jobs(limit=500, regrace_seconds=LEASE) if job.imp_uid == imp_uid
    ] == []

    offset.ms += int((LEASE + 1) * 1000)
    assert abs(second.now() - (redis_now(client) + LEASE + 1)) < 1
    assert JobKey.payment(imp_uid) in stuck(client, older_than=0, clock_offset=offset)
    assert oldest_due_seconds(client, clock_offset=offset) >= 1
    [job] = [
        job for job in second.due_jobs(limit=500, regrace_seconds=LEASE) if job.imp_uid == imp_uid
    ]
    assert (job.task_id, job.fence) == (f"{imp_uid}-t1", 1)
    taken = second.claim(imp_uid, task_id=f"{imp_uid}-t2", payload=PAYLOAD)
    assert (taken.kind, taken.fence, taken.resumed) == ("claimed", 2, True)
    # Without the offset (Redis's own clock) the new lease is a whole lease and more away.
    lease_until = float((second.raw_record(imp_uid) or {})["lease_until"])
    assert lease_until / 1000 - redis_now(client) > 2 * LEASE
