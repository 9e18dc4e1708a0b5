"""PortOne V2 cash receipts (issue 16) through a real worker and the sandbox's V2 API.

A worker that serves ``PROVIDERS=iamport,portone`` issues ``provider: portone`` jobs with
``POST /cash-receipts`` under the sandbox's ``/portone`` prefix: the API secret on every
call, an ``Idempotency-Key`` on every POST, the payment read first for ``kind: payment``.
A worker that does not serve portone ends such a job ``not_configured``, sending nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from tests.support.commands import run_cashreceipt
from tests.support.payloads import PHONE, portone_payload
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
    ProcessOutput,
    portone_env,
    producer_app,
    running_worker,
    worker_env,
)
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.core.schemas import InvalidPayload

pytestmark = pytest.mark.integration

SERVED = BOTH_PROVIDERS


@pytest.fixture(scope="module")
def v2_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A Redis, so a queue, of this module's own: every worker on one queue must serve the
    same providers, and the session's worker serves iamport only."""
    with running_redis(tmp_path_factory.mktemp("v2-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def v2_worker(v2_redis: RedisServer, sandbox: Sandbox) -> Iterator[ProcessOutput]:
    with running_worker(portone_env(v2_redis.url, sandbox)) as output:
        yield output


@pytest.fixture(scope="module")
def v2_producer(v2_redis: RedisServer) -> Iterator[Celery]:
    """A producer whose app says which providers the workers serve."""
    app = producer_app(v2_redis.url)
    app.conf.providers = SERVED
    yield app
    app.close()


@pytest.fixture
def results(v2_redis: RedisServer) -> ResultStream:
    """The events of this module's Redis."""
    return ResultStream(v2_redis.client())


def v2_payload(sandbox: Sandbox, payment_id: str, **fields: Any) -> dict[str, Any]:
    return portone_payload(payment_id, sandbox.portone_channel_key, **fields)


@pytest.mark.usefixtures("v2_worker")
def test_an_external_v2_receipt_is_issued_once_with_a_key_and_the_secret(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    task_id = enqueue_issue(
        v2_payload(sandbox, payment_id, tax_free=3000, paid_at="2026-12-06T18:30:00+09:00"),
        app=v2_producer,
    )
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.issued", event
    data = event["data"]
    assert {key: data[key] for key in ("receipt_key", "provider", "kind", "payment_id")} == {
        "receipt_key": f"portone:{payment_id}",
        "provider": "portone",
        "kind": "external",
        "payment_id": payment_id,
    }
    assert data["imp_uid"] is None
    assert (data["receipt"]["amount"], data["receipt"]["type"]) == (33000, "person")
    assert data["receipt"]["apply_num"]
    [post] = portone_posts(sandbox, payment_id)
    key = post["headers"]["Idempotency-Key"]
    assert key.startswith('"') and key.endswith('"') and len(key) == 45
    assert post["headers"]["Authorization"] != f"PortOne {sandbox.portone_secret}"  # hidden
    body = post["body"]
    assert (body["paymentId"], body["storeId"], body["amount"]) == (
        payment_id,
        sandbox.portone_store_id,
        {"total": 33000, "taxFree": 3000},
    )
    assert body["paidAt"] == "2026-12-06T09:30:00Z"
    assert sandbox.admin.portone_issued_count(payment_id) == 1
    assert PHONE not in str(results.all())


@pytest.mark.usefixtures("v2_worker")
def test_an_answer_lost_after_the_work_is_settled_by_a_lookup_not_a_second_receipt(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """PortOne acts, then the answer comes after the worker's timeout: the retry looks
    (after PORTONE_SETTLE_SECONDS) and finds the receipt; one receipt, one event."""
    sandbox.admin.script_portone(payment_id, {"kind": "hang_after", "seconds": 3})
    event = results.wait(enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer))
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    wait_portone_posts_processed(sandbox.admin, payment_id, timeout=10)
    assert sandbox.admin.portone_issued_count(payment_id) == 1
    assert len(portone_posts(sandbox, payment_id)) == 1


@pytest.mark.usefixtures("v2_worker")
@pytest.mark.parametrize(
    ("seeded", "outcome", "reason", "sent"),
    [
        ({"status": "PAID"}, "cash_receipt.issued", None, 1),
        ({"status": "VIRTUAL_ACCOUNT_ISSUED"}, "cash_receipt.failed", "not_paid", 0),
        (
            {"status": "PAID", "amount": {"total": 30000}},
            "cash_receipt.failed",
            "amount_mismatch",
            0,
        ),
    ],
)
def test_a_v2_payment_is_read_first(
    seeded: dict[str, Any],
    outcome: str,
    reason: str | None,
    sent: int,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """Issued only when PAID, for the payment's amount; a virtual account not yet
    deposited ends not_paid, replayable; nothing is sent otherwise."""
    fields: dict[str, Any] = {
        "amount": {"total": 33000},
        "method": "VIRTUAL_ACCOUNT",
        **seeded,
    }
    sandbox.admin.seed_portone_payment(payment_id, **fields)
    event = results.wait(
        enqueue_issue(v2_payload(sandbox, payment_id, kind="payment"), app=v2_producer)
    )
    assert event["type"] == outcome, event
    if reason is not None:
        assert event["data"]["error"]["reason"] == reason
    assert len(portone_posts(sandbox, payment_id)) == sent


@pytest.mark.usefixtures("v2_worker")
def test_a_receipt_issued_in_the_payment_window_is_adopted(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    sandbox.admin.seed_portone_payment(
        payment_id,
        status="PAID",
        amount={"total": 33000},
        method="TRANSFER",
        cashReceipt={"type": "PERSONAL", "totalAmount": 33000},
    )
    event = results.wait(
        enqueue_issue(v2_payload(sandbox, payment_id, kind="payment"), app=v2_producer)
    )
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", True)
    assert portone_posts(sandbox, payment_id) == []


def test_a_worker_that_does_not_serve_portone_sends_nothing(
    own_redis: RedisServer, sandbox: Sandbox, payment_id: str
) -> None:
    """A worker that serves iamport only (its own queue: every worker on one queue must
    serve the same providers): a V2 job ends not_configured, replayable, nothing sent."""
    app = producer_app(own_redis.url)
    results = ResultStream(own_redis.client())
    with running_worker(worker_env(own_redis.url, sandbox.url)):
        task_id = str(
            app.send_task(
                "issue_cash_receipt", args=[v2_payload(sandbox, payment_id)], queue="cash_receipts"
            ).id
        )
        event = results.wait(task_id)
    app.close()
    assert event["type"] == "cash_receipt.failed"
    assert (event["data"]["error"]["reason"], event["data"]["error"]["retryable"]) == (
        "not_configured",
        True,
    )
    assert sandbox.admin.portone_requests(payment_id) == []


def test_the_producer_refuses_a_provider_no_worker_serves(
    producer: Celery, sandbox: Sandbox, payment_id: str
) -> None:
    with pytest.raises(InvalidPayload) as caught:
        enqueue_issue(v2_payload(sandbox, payment_id), app=producer)
    assert "PROVIDERS" in caught.value.errors["provider"][0]


@pytest.mark.usefixtures("v2_worker")
def test_reconcile_lists_a_v2_payment_id_and_sees_a_second_live_receipt(
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """reconcile looks a V2 job up through PortOne's API, and lists its payment id: a
    second live receipt (one the PG issued at approval, found later) is a mismatch."""
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000}, method="TRANSFER"
    )
    sale = v2_payload(sandbox, payment_id, kind="payment")
    assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
    env = portone_env(v2_redis.url, sandbox)
    key = f"portone:{payment_id}"
    clean = run_cashreceipt(env, "reconcile", "--json", key)
    assert clean.returncode == 0, clean.stderr
    assert "1 checked, 0 mismatched" in clean.stderr
    sandbox.admin.seed_portone_payment(payment_id, cashReceipt={"type": "PERSONAL"})
    found = run_cashreceipt(env, "reconcile", "--json", key)
    assert found.returncode == 1, found.stderr
    [line] = [json.loads(text) for text in found.stdout.splitlines()]
    assert (line["receipt_key"], line["iamport"]) == (key, "2 active receipts")


@pytest.mark.usefixtures("v2_worker")
@pytest.mark.parametrize("reissue", ["allow", "refuse"])
def test_a_v2_external_receipt_is_refunded_as_v1_s_is(
    reissue: str,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """A partial refund: the cancel (with its own key), then the balance under the same
    payment id; where PortOne refuses a re-issue, cancelled and one failure, id_taken."""
    sandbox.admin.set_portone_reissue(reissue)
    try:
        issued = results.wait(enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer))
        assert issued["type"] == "cash_receipt.issued"
        refund = {
            "provider": "portone",
            "kind": "external",
            "payment_id": payment_id,
            "remaining_amount": 20000,
        }
        cancelled, then = results.wait_many(enqueue_cancel(refund, app=v2_producer), 2)
    finally:
        sandbox.admin.set_portone_reissue("refuse")
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert cancelled["data"]["receipt"]["amount"] == 33000
    [cancel] = portone_posts(sandbox, payment_id, PORTONE_CANCEL_PATH)
    assert (
        cancel["headers"]["Idempotency-Key"]
        != portone_posts(sandbox, payment_id)[0]["headers"]["Idempotency-Key"]
    )
    if reissue == "allow":
        assert (then["type"], then["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)
        assert portone_posts(sandbox, payment_id)[-1]["body"]["amount"] == {"total": 20000}
    else:
        assert (then["type"], then["data"]["error"]["reason"]) == (
            "cash_receipt.failed",
            "id_taken",
        )


@pytest.mark.usefixtures("v2_worker")
def test_a_v2_payment_is_refunded_in_full(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000}, method="TRANSFER"
    )
    sale = v2_payload(sandbox, payment_id, kind="payment")
    assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
    full = {"provider": "portone", "payment_id": payment_id}
    [event] = results.wait_many(enqueue_cancel(full, app=v2_producer), 1)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.cancelled", False)
    assert len(portone_posts(sandbox, payment_id, PORTONE_CANCEL_PATH)) == 1


def refund_at_portone(
    sandbox: Sandbox, payment_id: str, cancelled: int, tax_free: int | None = None
) -> None:
    """What PortOne's 33000 won payment shows once the merchant refunded part of it; with
    ``tax_free``, of a sale with 3000 won tax-free, that much of it refunded."""
    sandbox.admin.refund_portone_payment(
        payment_id,
        total=33000,
        cancelled=cancelled,
        tax_free=None if tax_free is None else 3000,
        cancelled_tax_free=tax_free or 0,
    )


@pytest.mark.usefixtures("v2_worker")
@pytest.mark.parametrize("reissue", ["allow", "refuse"])
def test_a_v2_payments_partial_refund_re_issues_the_balance_portone_shows(
    reissue: str,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """The balance is PortOne's payment's, total - cancelled and taxFree - cancelledTaxFree,
    with the sale's paidAt; where PortOne refuses the re-issue, the failure names the
    amount to issue by hand. The same refund again sends nothing."""
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000, "taxFree": 3000}, method="TRANSFER"
    )
    sale = v2_payload(
        sandbox, payment_id, kind="payment", tax_free=3000, paid_at="2026-12-01T09:00:00+09:00"
    )
    sandbox.admin.set_portone_reissue(reissue)
    try:
        assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
        refund_at_portone(sandbox, payment_id, cancelled=13000, tax_free=1000)
        refund = {"provider": "portone", "payment_id": payment_id, "amount": 13000}
        cancelled, then = results.wait_many(enqueue_cancel(refund, app=v2_producer), 2)
        # Sent again by a producer that names no refund_id: a task of its own.
        again = results.wait(enqueue_cancel(refund, app=v2_producer))
    finally:
        sandbox.admin.set_portone_reissue("refuse")
    assert (cancelled["type"], cancelled["data"]["receipt"]["amount"]) == (
        "cash_receipt.cancelled",
        33000,
    )
    first, *rest = portone_posts(sandbox, payment_id)
    if reissue == "allow":
        assert (then["type"], then["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)
        [reissued] = rest
        assert reissued["body"]["amount"] == {"total": 20000, "taxFree": 2000}
        assert reissued["body"]["paidAt"] == first["body"]["paidAt"]
        assert reissued["headers"]["Idempotency-Key"] != first["headers"]["Idempotency-Key"]
    else:
        assert (then["type"], then["data"]["error"]["reason"]) == (
            "cash_receipt.failed",
            "id_taken",
        )
        message = then["data"]["error"]["message"]
        assert (
            "no new id" in message
            and "issue 20000 won (2000 won of it tax-free) by hand" in message
        )
    # The same refund again: nothing cancelled, nothing issued.
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.cancelled", True)
    assert len(portone_posts(sandbox, payment_id, PORTONE_CANCEL_PATH)) == 1
    assert len(portone_posts(sandbox, payment_id)) == 1 + len(rest)


@pytest.mark.usefixtures("v2_worker")
def test_a_v2_payments_refund_waits_until_portone_shows_it(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """A refund PortOne's payment does not show yet cancels nothing: the balance would be
    the whole sale. Once PortOne shows it, the balance is re-issued."""
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000, "taxFree": 3000}, method="TRANSFER"
    )
    sale = v2_payload(sandbox, payment_id, kind="payment", tax_free=3000)
    sandbox.admin.set_portone_reissue("allow")
    try:
        assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
        refund = {"provider": "portone", "payment_id": payment_id, "amount": 13000}
        task_id = enqueue_cancel(refund, app=v2_producer)
        reads_before = len(portone_payment_reads(sandbox, payment_id))
        # Two attempts read the payment, and cancelled nothing.
        wait_for(
            lambda: len(portone_payment_reads(sandbox, payment_id)) >= reads_before + 2, timeout=30
        )
        assert portone_posts(sandbox, payment_id, PORTONE_CANCEL_PATH) == []
        refund_at_portone(sandbox, payment_id, cancelled=13000, tax_free=1000)
        cancelled, then = results.wait_many(task_id, 2)
    finally:
        sandbox.admin.set_portone_reissue("refuse")
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert (then["type"], then["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)


@pytest.mark.usefixtures("v2_worker")
def test_a_re_issue_sent_again_keeps_its_key_and_its_body(
    v2_producer: Celery, sandbox: Sandbox, results: ResultStream, payment_id: str
) -> None:
    """The balance is frozen when the refund is first handled: a re-issue that got no
    answer goes again under the same key with the same body, even when PortOne's payment
    has moved meanwhile (a later refund, which its own task handles)."""
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000, "taxFree": 3000}, method="TRANSFER"
    )
    sale = v2_payload(sandbox, payment_id, kind="payment", tax_free=3000)
    sandbox.admin.set_portone_reissue("allow")
    try:
        assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
        refund_at_portone(sandbox, payment_id, cancelled=13000, tax_free=1000)
        # The re-issue's first POST gets no answer (past PORTONE_TIMEOUT, nothing done).
        sandbox.admin.script_portone(
            payment_id, {"kind": "hang", "seconds": 3, "method": "POST", "endpoint": "receipts"}
        )
        refund = {"provider": "portone", "payment_id": payment_id, "amount": 13000}
        task_id = enqueue_cancel(refund, app=v2_producer)
        wait_for(lambda: len(portone_posts(sandbox, payment_id)) == 2, timeout=20)
        # While it hangs, a second refund reaches PortOne's payment.
        refund_at_portone(sandbox, payment_id, cancelled=18000, tax_free=1000)
        cancelled, then = results.wait_many(task_id, 2, timeout=30)
    finally:
        sandbox.admin.set_portone_reissue("refuse")
    assert cancelled["type"] == "cash_receipt.cancelled"
    assert (then["type"], then["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 20000)
    _, *reissues = portone_posts(sandbox, payment_id)
    assert len(reissues) >= 2
    assert {entry["headers"]["Idempotency-Key"] for entry in reissues} == {
        reissues[0]["headers"]["Idempotency-Key"]
    }
    assert [entry["body"]["amount"] for entry in reissues] == [
        {"total": 20000, "taxFree": 2000}
    ] * len(reissues)
    wait_portone_posts_processed(sandbox.admin, payment_id, timeout=10)
    assert sandbox.admin.portone_issued_count(payment_id) == 2


def replayed_lines(env: dict[str, str], *args: str, exit_code: int = 0) -> list[dict[str, Any]]:
    done = run_cashreceipt(env, "replay", "--json", *args)
    assert done.returncode == exit_code, done.stdout + done.stderr
    return [json.loads(text) for text in done.stdout.splitlines()]


@pytest.mark.usefixtures("v2_worker")
def test_replay_new_id_issues_a_v2_external_balance_under_a_derived_payment_id(
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """PortOne refused the balance under the payment id (id_taken): ``replay --new-id``
    issues it once under <payment_id>-r1, however often it is run."""
    issued = results.wait(enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer))
    assert issued["type"] == "cash_receipt.issued"
    refund = {"provider": "portone", "kind": "external", "payment_id": payment_id}
    _, failed = results.wait_many(
        enqueue_cancel({**refund, "remaining_amount": 20000}, app=v2_producer), 2
    )
    assert failed["data"]["error"]["reason"] == "id_taken"
    env = portone_env(v2_redis.url, sandbox)
    derived = f"{payment_id}-r1"
    for duplicate in (False, True):
        [line] = replayed_lines(env, "--new-id", f"portone:{payment_id}")
        assert line["issued_as"] == f"portone:{derived}", line
        event = results.wait(line["task_id"])
        assert (event["type"], event["data"]["payment_id"]) == ("cash_receipt.issued", derived)
        assert (event["data"]["receipt"]["amount"], event["data"]["duplicate"]) == (
            20000,
            duplicate,
        )
    assert sandbox.admin.portone_issued_count(derived) == 1


@pytest.mark.usefixtures("v2_worker")
def test_replay_new_id_refuses_a_v2_payment_and_names_the_amount(
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000}, method="TRANSFER"
    )
    sale = v2_payload(sandbox, payment_id, kind="payment")
    assert results.wait(enqueue_issue(sale, app=v2_producer))["type"] == "cash_receipt.issued"
    refund_at_portone(sandbox, payment_id, cancelled=13000)
    refund = {"provider": "portone", "payment_id": payment_id, "amount": 13000}
    _, failed = results.wait_many(enqueue_cancel(refund, app=v2_producer), 2)
    assert failed["data"]["error"]["reason"] == "id_taken"
    env = portone_env(v2_redis.url, sandbox)
    [line] = replayed_lines(env, "--new-id", f"portone:{payment_id}", exit_code=1)
    assert line["task_id"] is None
    assert "takes no new id: issue its balance, 20000 won, by hand" in line["skipped"]


def test_settle_looks_a_v2_job_up_at_portone(
    tmp_path: Path, sandbox: Sandbox, payment_id: str
) -> None:
    """``cashreceipt settle portone:<id>`` asks PortOne (a job no worker ran: the receipt
    was issued in the payment window), not i'mport; an external one's kind comes from its
    payload, so its payment id is never read as a PortOne payment's."""
    other = f"{payment_id}-outside"
    sandbox.admin.seed_portone_payment(
        payment_id, status="PAID", amount={"total": 33000}, method="TRANSFER", cashReceipt={}
    )
    with running_redis(tmp_path) as server:
        app = producer_app(server.url)
        app.conf.providers = SERVED
        try:
            adopted = enqueue_issue(v2_payload(sandbox, payment_id, kind="payment"), app=app)
            resent = enqueue_issue(v2_payload(sandbox, other), app=app)
        finally:
            app.close()
        env = portone_env(server.url, sandbox)
        for key, outcome in ((payment_id, "issued"), (other, "resent")):
            done = run_cashreceipt(env, "settle", "--json", f"portone:{key}")
            assert done.returncode == 0, done.stdout + done.stderr
            assert json.loads(done.stdout)["outcome"] == outcome
        event = ResultStream(server.client()).wait(adopted)
        assert (event["type"], event["data"]["receipt"]["amount"]) == ("cash_receipt.issued", 33000)
        assert ResultStream(server.client()).for_task(resent) == []
    reads = [entry["path"] for entry in sandbox.admin.portone_requests(other)]
    assert reads and not any(path.endswith(f"/payments/{other}") for path in reads), reads


@pytest.mark.usefixtures("v2_worker")
def test_reconcile_checks_a_refunded_v2_external_receipt(
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """An external V2 receipt issued, then refunded in full: the ledger says cancelled, and
    PortOne shows the receipt CANCELLED. reconcile must find them agreeing."""
    issued = results.wait(enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer))
    assert issued["type"] == "cash_receipt.issued"
    refund = {"provider": "portone", "kind": "external", "payment_id": payment_id}
    [cancelled] = results.wait_many(enqueue_cancel(refund, app=v2_producer), 1)
    assert cancelled["type"] == "cash_receipt.cancelled"
    found = run_cashreceipt(
        portone_env(v2_redis.url, sandbox), "reconcile", f"portone:{payment_id}"
    )
    assert (found.returncode, "1 checked, 0 mismatched, 0 not checked" in found.stderr) == (
        0,
        True,
    ), (found.stdout, found.stderr)


@pytest.mark.usefixtures("v2_worker")
@pytest.mark.parametrize("lookup", ["issued_first", "oldest"])
def test_a_second_refund_cancels_the_live_re_issue_whichever_receipt_the_lookup_shows(
    lookup: str,
    v2_redis: RedisServer,
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """Two partial refunds of a V2 external receipt, where PortOne's lookup may show the
    first (cancelled) receipt while the re-issue is live: the list finds the live one, so
    the second refund cancels it rather than take "cancelled" for "nothing live"."""
    sandbox.admin.set_portone_reissue("allow")
    sandbox.admin.set_portone_lookup(lookup)
    try:
        issued = results.wait(enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer))
        assert issued["type"] == "cash_receipt.issued"
        refund = {"provider": "portone", "kind": "external", "payment_id": payment_id}
        events = []
        for remaining in (20000, 15000):
            task_id = enqueue_cancel({**refund, "remaining_amount": remaining}, app=v2_producer)
            events.append(results.wait_many(task_id, 2))
        reconciled = run_cashreceipt(
            portone_env(v2_redis.url, sandbox), "reconcile", f"portone:{payment_id}"
        )
    finally:
        sandbox.admin.set_portone_reissue("refuse")
        sandbox.admin.set_portone_lookup("issued_first")
    assert [[event["type"] for event in pair] for pair in events] == [
        ["cash_receipt.cancelled", "cash_receipt.issued"]
    ] * 2
    assert [pair[0]["data"]["receipt"]["amount"] for pair in events] == [33000, 20000]
    assert events[1][1]["data"]["receipt"]["amount"] == 15000
    live = portone_live(sandbox, payment_id)
    assert [receipt["amount"] for receipt in live] == [15000]
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr


@pytest.mark.usefixtures("v2_worker")
@pytest.mark.parametrize(
    "other",
    [{"amount": 5000}, {"kind": "payment"}, {"identifier": "01099998888"}],
    ids=["another-amount", "another-kind", "another-buyer"],
)
def test_another_sale_under_a_payment_id_in_flight_is_an_id_conflict(
    other: dict[str, Any],
    v2_producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    payment_id: str,
) -> None:
    """A job for another sale under the payment id of one still in flight fails
    ``id_conflict`` at once, never hears the first's receipt as its own; the same sale
    again waits and hears it, a duplicate."""
    if other.get("kind") == "payment":
        sandbox.admin.seed_portone_payment(
            payment_id, status="PAID", amount={"total": 33000}, method="TRANSFER"
        )
    # The first POST is slow (within PORTONE_TIMEOUT): the job is in flight meanwhile.
    sandbox.admin.script_portone(
        payment_id, {"kind": "latency", "ms": 800, "method": "POST", "endpoint": "receipts"}
    )
    first = enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer)
    wait_for(lambda: len(portone_posts(sandbox, payment_id)) == 1, timeout=10)
    conflicting = enqueue_issue(v2_payload(sandbox, payment_id, **other), app=v2_producer)
    same = enqueue_issue(v2_payload(sandbox, payment_id), app=v2_producer)
    refused = results.wait(conflicting)
    assert (refused["type"], refused["data"]["error"]["reason"]) == (
        "cash_receipt.failed",
        "id_conflict",
    )
    assert "payment id" in refused["data"]["error"]["message"]
    issued, again = results.wait(first), results.wait(same)
    assert (issued["type"], issued["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.issued", True)
    for task_id in (first, conflicting, same):
        assert len(results.for_task(task_id)) == 1
    assert len(portone_posts(sandbox, payment_id)) == 1
