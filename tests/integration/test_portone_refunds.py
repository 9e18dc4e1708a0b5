"""A PortOne V2 payment's partial refunds, each leaving PortOne's balance live (issue 16
review, findings 1 to 6), through real workers and the sandbox's V2 API.

V2's cancel takes no amount: a partial refund cancels the live receipt and issues the
balance read from PortOne's payment, which the worker records (and freezes). These tests
hold the balance right where a refund is not the only one: a later refund PortOne does
not show yet, two refunds before the sale's confirmation, a refund that takes another's
parked job over, a tax-free split the payment does not have, and a plain replay of a
re-issue that failed.

Two workers, each on a Redis (a queue) of this module's own: every worker on one queue
must serve the same providers, and the takeover tests need a worker whose jobs park. That
one has ``PORTONE_SETTLE_SECONDS`` (6) above ``RETRY_COUNTDOWN_MAX`` (1), as the
defaults are (60 > 30): a partial refund parks its job (state ``received``) between its
cancel and its re-issue, and after a re-issue POST that got no answer, for the settle
bound; a refund message that comes meanwhile takes the job over.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.commands import run_cashreceipt
from tests.support.payloads import portone_payload
from tests.support.redis_server import RedisServer, running_redis
from tests.support.results import ResultStream
from tests.support.sandbox import (
    PORTONE_CANCEL_PATH,
    Sandbox,
    portone_live,
    portone_payment_reads,
    portone_posts,
    wait_portone_posts_processed,
)
from tests.support.wait import wait_for
from tests.support.worker import (
    BOTH_PROVIDERS,
    portone_env,
    producer_app,
    running_worker,
)
from worker.adapters.store.keys import record_key
from worker.celery.producer import enqueue_cancel, enqueue_issue

pytestmark = pytest.mark.integration

#: A worker whose transient retries last long enough (30 attempts, backoff up to 0.5 s)
#: for a test to see a refund wait for PortOne, then catch PortOne up while it waits.
PATIENT = {"RETRY_MAX_ATTEMPTS": "30", "RETRY_BACKOFF_MAX": "0.5"}
#: A worker whose jobs park for the settle bound (6 s > RETRY_COUNTDOWN_MAX, 1 s).
PARKING = {"PORTONE_SETTLE_SECONDS": "6", "RETRY_COUNTDOWN_MAX": "1", "SWEEP_INTERVAL": "0.5"}
#: How often a condition on the sandbox's request log is polled, in seconds.
POLL = 0.1


@contextmanager
def v2_queue(path: Path, sandbox: Sandbox, **settings: str) -> Iterator[RedisServer]:
    """A Redis (a queue) of its own, with a worker on it that serves PortOne V2 with
    ``settings``."""
    with (
        running_redis(path) as server,
        running_worker(portone_env(server.url, sandbox, **settings)),
    ):
        yield server


@pytest.fixture(scope="module")
def v2_redis(tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox) -> Iterator[RedisServer]:
    """The queue of the module's fast worker (a settle bound of 1 s, patient retries)."""
    with v2_queue(tmp_path_factory.mktemp("v2-refunds-redis"), sandbox, **PATIENT) as server:
        yield server


@pytest.fixture(scope="module")
def parking_redis(
    tmp_path_factory: pytest.TempPathFactory, sandbox: Sandbox
) -> Iterator[RedisServer]:
    """The queue of the module's parking worker: no other worker may take its jobs."""
    with v2_queue(tmp_path_factory.mktemp("v2-parking-redis"), sandbox, **PARKING) as server:
        yield server


def v2_app(server: RedisServer) -> Celery:
    """A producer on ``server`` whose app says which providers the workers serve."""
    app = producer_app(server.url)
    app.conf.providers = BOTH_PROVIDERS
    return app


@pytest.fixture(scope="module")
def v2_producer(v2_redis: RedisServer) -> Iterator[Celery]:
    app = v2_app(v2_redis)
    yield app
    app.close()


@pytest.fixture(scope="module")
def parking_producer(parking_redis: RedisServer) -> Iterator[Celery]:
    app = v2_app(parking_redis)
    yield app
    app.close()


@pytest.fixture
def results(v2_redis: RedisServer) -> ResultStream:
    return ResultStream(v2_redis.client())


@pytest.fixture
def parking_results(parking_redis: RedisServer) -> ResultStream:
    return ResultStream(parking_redis.client())


@pytest.fixture
def reissue_allowed(sandbox: Sandbox) -> Iterator[None]:
    """PortOne issues a paymentId's receipt again once its receipts are all cancelled."""
    sandbox.admin.set_portone_reissue("allow")
    yield
    sandbox.admin.set_portone_reissue("refuse")


def portone_shows(
    sandbox: Sandbox, payment_id: str, *, cancelled: int, tax_free: int | None = None
) -> None:
    """PortOne's payment of 33000 won (TRANSFER), with ``cancelled`` of it refunded."""
    sandbox.admin.refund_portone_payment(
        payment_id, total=33000, cancelled=cancelled, tax_free=tax_free
    )


def sale(sandbox: Sandbox, payment_id: str, **fields: Any) -> dict[str, Any]:
    """The payment's confirmation: a receipt for the sale, 33000 won."""
    return portone_payload(payment_id, sandbox.portone_channel_key, kind="payment", **fields)


def refund(payment_id: str, amount: int | None, refund_id: str) -> dict[str, Any]:
    """A refund of the payment: partial for ``amount`` won, or in full (None)."""
    message: dict[str, Any] = {"provider": "portone", "payment_id": payment_id}
    if amount is not None:
        message["amount"] = amount
    return {**message, "refund_id": refund_id}


def issues_sent(sandbox: Sandbox, payment_id: str) -> list[int]:
    """The totals of every POST /cash-receipts for the payment, oldest first."""
    return [entry["body"]["amount"]["total"] for entry in portone_posts(sandbox, payment_id)]


def cancels_sent(sandbox: Sandbox, payment_id: str) -> int:
    return len(portone_posts(sandbox, payment_id, PORTONE_CANCEL_PATH))


def payment_reads(sandbox: Sandbox, payment_id: str) -> int:
    return len(portone_payment_reads(sandbox, payment_id))


def live(sandbox: Sandbox, payment_id: str) -> list[int]:
    """The amounts of the payment's live (ISSUED) receipts at PortOne."""
    return [receipt["amount"] for receipt in portone_live(sandbox, payment_id)]


def job_state(server: RedisServer, payment_id: str) -> str | None:
    state: str | None = server.client().hget(record_key(f"portone:{payment_id}"), "state")
    return state


def wait_parked(server: RedisServer, payment_id: str, sent: Callable[[], bool], what: str) -> None:
    """Until ``sent`` holds and the payment's job is parked (state ``received``)."""
    wait_for(
        lambda: sent() and job_state(server, payment_id) == "received",
        timeout=20,
        interval=POLL,
        message=f"{what} and the job to park",
    )


def summary(events: list[dict[str, Any]]) -> list[tuple[str, bool, int | None]]:
    """Each event's type, whether a duplicate, and its receipt's amount."""
    return [
        (
            event["type"],
            event["data"]["duplicate"],
            (event["data"].get("receipt") or {}).get("amount"),
        )
        for event in events
    ]


def issue(producer: Celery, results: ResultStream, sandbox: Sandbox, payment_id: str) -> None:
    portone_shows(sandbox, payment_id, cancelled=0)
    event = results.wait(enqueue_issue(sale(sandbox, payment_id), app=producer))
    assert summary([event]) == [("cash_receipt.issued", False, 33000)]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_later_refund_portone_does_not_show_yet_waits_for_it(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """Refund r2 (1000) comes while PortOne's payment still shows only r1 (2000): it shows
    more refunded than r2's amount, yet r2's refund_id is new, so r2 waits for PortOne
    and sends nothing meanwhile (finding 4). Once PortOne shows it, the live receipt is
    the new balance, 30000, not r1's 31000 taken for r2's."""
    issue(v2_producer, results, sandbox, payment_id)
    portone_shows(sandbox, payment_id, cancelled=2000)
    first = enqueue_cancel(refund(payment_id, 2000, "r1"), app=v2_producer)
    assert summary(results.wait_many(first, 2)) == [
        ("cash_receipt.cancelled", False, 33000),
        ("cash_receipt.issued", False, 31000),
    ]
    reads = payment_reads(sandbox, payment_id)
    second = enqueue_cancel(refund(payment_id, 1000, "r2"), app=v2_producer)
    wait_for(
        lambda: results.for_task(second) or payment_reads(sandbox, payment_id) >= reads + 2,
        timeout=20,
        interval=POLL,
        message="refund r2 to read the payment twice",
    )
    assert summary(results.for_task(second)) == [], "r2 ended while PortOne did not show it"
    assert (issues_sent(sandbox, payment_id), cancels_sent(sandbox, payment_id)) == (
        [33000, 31000],
        1,
    )
    portone_shows(sandbox, payment_id, cancelled=3000)  # PortOne catches up, r2 still retrying
    assert summary(results.wait_many(second, 2, timeout=30)) == [
        ("cash_receipt.cancelled", False, 31000),
        ("cash_receipt.issued", False, 30000),
    ]
    assert issues_sent(sandbox, payment_id) == [33000, 31000, 30000]
    assert live(sandbox, payment_id) == [30000]


@pytest.mark.usefixtures("reissue_allowed")
def test_refunds_handled_out_of_order_are_both_accounted_for(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """r1 (2000) and r2 (1000) both reached PortOne; r2's message is handled first, and its
    balance is already both's. r1's message, late, is shown beyond what r2 accounts for:
    a duplicate at once, never a wait for a refund PortOne will show no more of."""
    issue(v2_producer, results, sandbox, payment_id)
    portone_shows(sandbox, payment_id, cancelled=3000)
    later = enqueue_cancel(refund(payment_id, 1000, "r2"), app=v2_producer)
    assert summary(results.wait_many(later, 2)) == [
        ("cash_receipt.cancelled", False, 33000),
        ("cash_receipt.issued", False, 30000),
    ]
    late = results.wait(enqueue_cancel(refund(payment_id, 2000, "r1"), app=v2_producer))
    # A duplicate names the receipt the refunds cancelled, as every repeated refund does.
    assert summary([late]) == [("cash_receipt.cancelled", True, 33000)]
    assert (issues_sent(sandbox, payment_id), cancels_sent(sandbox, payment_id)) == (
        [33000, 30000],
        1,
    )
    assert live(sandbox, payment_id) == [30000]


def test_two_refunds_before_the_confirmation_leave_the_final_balance(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """Two partial refunds reach the worker before the payment's confirmation: the second
    is no duplicate of the first (finding 3), and the confirmation issues what PortOne's
    payment has left after both, 28000."""
    portone_shows(sandbox, payment_id, cancelled=2000)
    first = results.wait(enqueue_cancel(refund(payment_id, 2000, "r1"), app=v2_producer))
    assert summary([first]) == [("cash_receipt.cancelled", False, None)]
    portone_shows(sandbox, payment_id, cancelled=5000)
    second = results.wait(enqueue_cancel(refund(payment_id, 3000, "r2"), app=v2_producer))
    assert summary([second]) == [("cash_receipt.cancelled", False, None)]
    issued = results.wait(enqueue_issue(sale(sandbox, payment_id), app=v2_producer))
    assert summary([issued]) == [("cash_receipt.issued", False, 28000)]
    assert (issues_sent(sandbox, payment_id), cancels_sent(sandbox, payment_id)) == ([28000], 0)
    assert live(sandbox, payment_id) == [28000]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_second_refund_that_takes_a_parked_job_over_re_issues_its_own_balance(
    parking_producer: Celery,
    sandbox: Sandbox,
    parking_results: ResultStream,
    parking_redis: RedisServer,
    payment_id: str,
) -> None:
    """Refund r1 (2000) cancels the receipt, then parks to wait out its cancel. Refund r2
    (3000 more) takes the parked job over: it reads the payment itself and re-issues
    28000, not r1's 31000 (finding 2); r1 ends as a duplicate."""
    results = parking_results
    issue(parking_producer, results, sandbox, payment_id)
    portone_shows(sandbox, payment_id, cancelled=2000)
    first = enqueue_cancel(refund(payment_id, 2000, "r1"), app=parking_producer)
    wait_parked(
        parking_redis, payment_id, lambda: cancels_sent(sandbox, payment_id) == 1, "r1 to cancel"
    )
    portone_shows(sandbox, payment_id, cancelled=5000)
    second = enqueue_cancel(refund(payment_id, 3000, "r2"), app=parking_producer)
    taken = summary(results.wait_many(second, 2, timeout=40))
    ended = summary(wait_for(lambda: results.for_task(first), timeout=20, interval=POLL))
    # r2 came while r1 was parked: r1's re-issue (31000) was never sent.
    assert ended[-1][:2] == ("cash_receipt.cancelled", True), ended
    assert taken[-1] == ("cash_receipt.issued", False, 28000), taken
    assert issues_sent(sandbox, payment_id) == [33000, 28000]
    assert live(sandbox, payment_id) == [28000]


@pytest.mark.usefixtures("reissue_allowed")
def test_a_full_refund_that_takes_a_parked_job_over_cancels_the_landed_re_issue(
    parking_producer: Celery,
    sandbox: Sandbox,
    parking_results: ResultStream,
    parking_redis: RedisServer,
    payment_id: str,
) -> None:
    """Refund r1's re-issue (31000) gets no answer in time: PortOne acts on it 3 s after it
    came (PORTONE_TIMEOUT is 1 s), after the worker's lookup found nothing, so the job
    parks for the settle bound. A full refund then takes the job over: it cancels the
    re-issue that landed, and nothing stays live (finding 1)."""
    results = parking_results
    issue(parking_producer, results, sandbox, payment_id)
    portone_shows(sandbox, payment_id, cancelled=2000)
    sandbox.admin.script_portone(
        payment_id, {"kind": "latency", "ms": 3000, "method": "POST", "endpoint": "receipts"}
    )
    first = enqueue_cancel(refund(payment_id, 2000, "r1"), app=parking_producer)
    wait_for(
        lambda: (
            issues_sent(sandbox, payment_id) == [33000, 31000]
            and job_state(parking_redis, payment_id) == "received"
        ),
        timeout=30,
        interval=POLL,
        message="r1's re-issue POST, then the job to park",
    )
    wait_for(
        lambda: sandbox.admin.portone_issued_count(payment_id) == 2,
        timeout=10,
        interval=POLL,
        message="PortOne to act on the held re-issue",
    )
    assert job_state(parking_redis, payment_id) == "received", "the job parks still"
    assert live(sandbox, payment_id) == [31000]
    portone_shows(sandbox, payment_id, cancelled=33000)
    full = enqueue_cancel(refund(payment_id, None, "full"), app=parking_producer)
    [event] = results.wait_many(full, 1, timeout=40)
    ended = summary(wait_for(lambda: results.for_task(first), timeout=20, interval=POLL))
    # The full refund came while r1 was parked: r1 ends with its outcome, a duplicate.
    assert ended[-1][:2] == ("cash_receipt.cancelled", True), ended
    assert event["type"] == "cash_receipt.cancelled"
    wait_portone_posts_processed(sandbox.admin, payment_id, timeout=10)
    assert (live(sandbox, payment_id), cancels_sent(sandbox, payment_id)) == ([], 2)


@pytest.mark.parametrize(
    ("sale_tax_free", "payment_tax_free"), [(3000, None), (1000, 3000), (None, 3000)]
)
def test_a_tax_free_part_that_is_not_the_payments_is_an_amount_mismatch(
    sale_tax_free: int | None,
    payment_tax_free: int | None,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """A sale whose tax-free part PortOne's payment does not show is refused before
    anything is sent (finding 6): issued, its refunds' balances (read from the payment)
    could never be re-issued for it."""
    portone_shows(sandbox, payment_id, cancelled=0, tax_free=payment_tax_free)
    fields = {} if sale_tax_free is None else {"tax_free": sale_tax_free}
    event = results.wait(enqueue_issue(sale(sandbox, payment_id, **fields), app=v2_producer))
    assert event["type"] == "cash_receipt.failed", summary([event])
    error = event["data"]["error"]
    assert (error["reason"], "tax-free" in error["message"]) == ("amount_mismatch", True), error
    assert issues_sent(sandbox, payment_id) == []


def test_a_plain_replay_of_a_failed_re_issue_issues_the_balance(
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """PortOne refused the balance's re-issue (id_taken); once it takes it, a plain
    ``cashreceipt replay portone:<id>`` issues the balance, 20000, under the payment id:
    the payment is checked against the sale's total, not the balance's (finding 5)."""
    issue(v2_producer, results, sandbox, payment_id)
    portone_shows(sandbox, payment_id, cancelled=13000)
    task_id = enqueue_cancel(refund(payment_id, 13000, "r1"), app=v2_producer)
    _, failed = results.wait_many(task_id, 2)
    assert failed["data"]["error"]["reason"] == "id_taken"
    sandbox.admin.set_portone_reissue("allow")
    try:
        done = run_cashreceipt(
            portone_env(v2_redis.url, sandbox), "replay", "--json", f"portone:{payment_id}"
        )
        assert done.returncode == 0, done.stdout + done.stderr
        [line] = [json.loads(text) for text in done.stdout.splitlines()]
        event = results.wait(line["task_id"])
    finally:
        sandbox.admin.set_portone_reissue("refuse")
    assert summary([event]) == [("cash_receipt.issued", False, 20000)], event["data"].get("error")
    # The sale, the re-issue PortOne refused, and the replay's.
    assert issues_sent(sandbox, payment_id) == [33000, 20000, 20000]
    assert (sandbox.admin.portone_issued_count(payment_id), live(sandbox, payment_id)) == (
        2,
        [20000],
    )


def refund_of(
    sandbox: Sandbox, kind: str, payment_id: str, amount: int, cancelled: int
) -> dict[str, Any]:
    """The refund ``r<cancelled>`` of ``amount`` of a 33000 won V2 sale of ``kind``,
    ``cancelled`` refunded in all: an external receipt's says what is left, a payment's its
    amount, once PortOne's payment shows it."""
    if kind == "payment":
        portone_shows(sandbox, payment_id, cancelled=cancelled)
        return refund(payment_id, amount, f"r{cancelled}")
    return {"provider": "portone", "kind": kind, "payment_id": payment_id,
            "remaining_amount": 33000 - cancelled}  # fmt: skip


def issued_v2(
    producer: Celery, results: ResultStream, sandbox: Sandbox, kind: str, payment_id: str
) -> None:
    """A 33000 won V2 sale of ``kind`` issued (a payment's seeded PAID first)."""
    if kind == "payment":
        issue(producer, results, sandbox, payment_id)
        return
    payload = portone_payload(payment_id, sandbox.portone_channel_key, kind=kind)
    assert results.wait(enqueue_issue(payload, app=producer))["type"] == "cash_receipt.issued"


@pytest.mark.usefixtures("reissue_allowed")
@pytest.mark.parametrize("kind", ["payment", "external"])
def test_a_partial_refund_whose_cancel_got_no_answer_still_re_issues_the_balance(
    kind: str, v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """The cancel's 503 is an unknown outcome: the retry looks, cancels, and re-issues the
    balance, however the balance was recorded before the cancel was sent."""
    issued_v2(v2_producer, results, sandbox, kind, payment_id)
    cancel = refund_of(sandbox, kind, payment_id, 13000, 13000)
    sandbox.admin.script_portone(
        payment_id, {"kind": "status", "status": 503, "method": "POST", "endpoint": "cancel"}
    )
    told = results.transition(enqueue_cancel(cancel, app=v2_producer), timeout=30)
    assert (told, live(sandbox, payment_id)) == (
        [("cash_receipt.cancelled", False, 33000), ("cash_receipt.issued", False, 20000)],
        [20000],
    )


@pytest.mark.usefixtures("reissue_allowed")
@pytest.mark.parametrize("kind", ["payment", "external"])
def test_a_refund_that_takes_over_a_re_issue_left_unanswered_leaves_its_own_balance(
    kind: str,
    parking_producer: Celery,
    sandbox: Sandbox,
    parking_results: ResultStream,
    parking_redis: RedisServer,
    payment_id: str,
) -> None:
    """r1's re-issue POST is dropped before PortOne acts; r1 parks to look after the settle
    bound; r2 takes the job over: in the end one receipt is live, for what both refunds
    leave, and no Idempotency-Key was sent with two bodies."""
    issued_v2(parking_producer, parking_results, sandbox, kind, payment_id)
    sandbox.admin.script_portone(
        payment_id, {"kind": "drop_before", "method": "POST", "endpoint": "receipts"}
    )
    first = enqueue_cancel(refund_of(sandbox, kind, payment_id, 1000, 1000), app=parking_producer)
    wait_parked(
        parking_redis,
        payment_id,
        lambda: len(issues_sent(sandbox, payment_id)) == 2,
        "r1's re-issue to go unanswered",
    )
    second = enqueue_cancel(refund_of(sandbox, kind, payment_id, 2000, 3000), app=parking_producer)
    for task in (first, second):
        parking_results.transition(task, timeout=40)
    wait_portone_posts_processed(sandbox.admin, payment_id, timeout=10)
    bodies: dict[str, set[str]] = {}
    for entry in portone_posts(sandbox.admin, payment_id):
        bodies.setdefault(entry["idempotency_key"], set()).add(json.dumps(entry["body"]))
    assert (live(sandbox, payment_id), [len(b) for b in bodies.values()]) == (
        [30000],
        [1] * len(bodies),
    )
