"""PortOne V2 (issue 16), black-box: real workers against an independent stand-in.

The stand-in (``tests/support/portone_standin.py``) shares nothing with the project's
sandbox: it checks every request against PortOne's OpenAPI schema (vendored fragments,
``portone_v2_schemas.json``), the Authorization and Idempotency-Key headers and the
store, enforces the key's semantics, and counts blind POSTs. The producers are bare:
a Celery app that knows no code of ours (``send_task``), and a raw protocol-2 message
pushed onto the queue, as the README documents for other languages. Every scenario
asserts: every request valid, exactly one live receipt per payment id, no blind POST,
and one terminal event per task message.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import requests
from celery import Celery

from tests.support.commands import run_cashreceipt
from tests.support.envelopes import body_of, envelope
from tests.support.portone_standin import (
    CANCEL,
    ISSUE,
    LIST,
    Fault,
    Payment,
    StandIn,
    running_standin,
)
from tests.support.redis_server import RedisServer, running_redis
from tests.support.results import ResultStream
from tests.support.wait import wait_for
from tests.support.worker import ProcessOutput, running_worker, worker_env

pytestmark = pytest.mark.integration

QUEUE = "cash_receipts"
PHONE = "01055554321"
#: The client's read timeout and PortOne's bound on late processing, compressed.
TIMEOUT, SETTLE = "0.5", "1"
EVENT_WAIT = 25.0


# -- the stand-in's own checks, without a worker -------------------------------------------------


def issue_body(standin: StandIn, payment_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "storeId": standin.store_id,
        "paymentId": payment_id,
        "channelKey": standin.channel_key,
        "type": "PERSONAL",
        "orderName": "Counter sale",
        "currency": "KRW",
        "amount": {"total": 33000},
        "customer": {"identityNumber": PHONE},
        **fields,
    }


def post(
    standin: StandIn, body: dict[str, Any], *, key: str | None, secret: str | None = None
) -> requests.Response:
    headers = {"Authorization": f"PortOne {secret or standin.secret}"}
    if key is not None:
        headers["Idempotency-Key"] = f'"{key}"'
    return requests.post(f"{standin.url}/cash-receipts", json=body, headers=headers, timeout=5)


def test_the_stand_in_refuses_what_portone_would_and_counts_blind_posts() -> None:
    with running_standin() as standin:
        first = f"pay-{uuid.uuid4().hex[:12]}"
        key = uuid.uuid4().hex
        assert post(standin, issue_body(standin, first), key=key, secret="wrong").status_code == 401
        assert post(standin, issue_body(standin, first), key=None).status_code == 400
        assert post(standin, issue_body(standin, first), key="short").status_code == 400
        bad = issue_body(standin, first, amount={"total": "33000"}, extra=1)
        refused = post(standin, bad, key=key)
        assert (refused.status_code, refused.json()["type"]) == (400, "INVALID_REQUEST")
        assert any("'extra' is not in the schema" in p for p in standin.problems(first))
        assert any('"33000" is not of type integer' in p for p in standin.problems(first))
        issued = post(standin, issue_body(standin, first), key=key)
        assert issued.status_code == 200, issued.text
        assert post(standin, issue_body(standin, first), key=key).json() == issued.json()
        other = post(standin, issue_body(standin, first, orderName="Other"), key=key)
        assert (other.status_code, other.json()["type"]) == (422, "IDEMPOTENCY_KEY_REUSED")
        again = post(standin, issue_body(standin, first), key=uuid.uuid4().hex)
        assert (again.status_code, again.json()["type"]) == (409, "CASH_RECEIPT_ALREADY_ISSUED")
        assert standin.blind(first) == [
            f"#{standin.posts(first)[-1].number} POST /cash-receipts: "
            "a new issue while the payment id has a live receipt"
        ]
        assert len(standin.live(first)) == 1

        second = f"pay-{uuid.uuid4().hex[:12]}"
        slow_key = uuid.uuid4().hex
        standin.script(second, ISSUE, Fault("slow", seconds=1.0))
        answers: list[requests.Response] = []
        thread = threading.Thread(
            target=lambda: answers.append(post(standin, issue_body(standin, second), key=slow_key))
        )
        thread.start()
        wait_for(lambda: standin.posts(second), timeout=5, message="the slow POST")
        outstanding = post(standin, issue_body(standin, second), key=slow_key)
        assert (outstanding.status_code, outstanding.json()["type"]) == (
            409,
            "IDEMPOTENCY_OUTSTANDING_REQUEST",
        )
        thread.join(5)
        assert answers[0].status_code == 200
        assert not standin.bugs


# -- real workers ------------------------------------------------------------------------------


def v2_env(redis_server: RedisServer, standin: StandIn, **more: str) -> dict[str, str]:
    settings = {
        "PROVIDERS": "portone",
        "PORTONE_API_URL": standin.url,
        "PORTONE_ALLOW_HTTP": "1",
        "PORTONE_API_SECRET": standin.secret,
        "PORTONE_STORE_ID": standin.store_id,
        "PORTONE_TIMEOUT": TIMEOUT,
        "PORTONE_SETTLE_SECONDS": SETTLE,
        "RETRY_MAX_ATTEMPTS": "10",
        "DUPLICATE_WAIT": "2",
        **more,
    }
    # i'mport is not served (PROVIDERS=portone): its URL is never called.
    return worker_env(redis_server.url, standin.url, **settings)


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    with running_standin() as server:
        yield server


@pytest.fixture(scope="module")
def v2_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with running_redis(tmp_path_factory.mktemp("standin-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def v2_worker(v2_redis: RedisServer, standin: StandIn) -> Iterator[ProcessOutput]:
    with running_worker(v2_env(v2_redis, standin)) as output:
        yield output


@pytest.fixture(scope="module")
def checkout(v2_redis: RedisServer) -> Iterator[Celery]:
    """A producer that knows none of our code: a bare Celery app on the broker."""
    app = Celery("checkout", broker=v2_redis.url)
    app.conf.task_serializer = "json"
    yield app
    app.close()


@pytest.fixture
def payment_id() -> str:
    return f"pay-{uuid.uuid4().hex[:12]}"


def payload(standin: StandIn, payment_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "provider": "portone",
        "kind": "external",
        "payment_id": payment_id,
        "channel_key": standin.channel_key,
        "order_name": "Counter sale",
        "amount": 33000,
        "identifier": PHONE,
        **fields,
    }


def send(checkout: Celery, task: str, body: dict[str, Any]) -> str:
    """``send_task``, as the README's producers in Python do."""
    return str(checkout.send_task(task, args=[body], queue=QUEUE).id)


def push_raw(client: redis.Redis, task: str, body: dict[str, Any]) -> str:
    """The protocol-2 message the README gives producers in other languages, LPUSHed."""
    task_id = str(uuid.uuid4())
    client.lpush(QUEUE, envelope(body_of(body), task=task, task_id=task_id))
    return task_id


def settled(standin: StandIn, payment_id: str) -> None:
    """Wait until the stand-in has answered (or dropped) every request for the payment id."""
    wait_for(
        lambda: not standin.in_flight(payment_id),
        timeout=15,
        message=f"the stand-in to finish with {payment_id}",
    )


def events_of(results: ResultStream, payment_id: str) -> list[dict[str, Any]]:
    return [event for event in results.all() if event["data"].get("payment_id") == payment_id]


def check(
    standin: StandIn,
    results: ResultStream,
    payment_id: str,
    task_ids: list[str],
    *,
    live: int = 1,
    timeout: float = EVENT_WAIT,
) -> list[dict[str, Any]]:
    """The oracle: valid requests, ``live`` receipts, no blind POST, one event per task."""
    events = [results.wait(task_id, timeout=timeout) for task_id in task_ids]
    settled(standin, payment_id)
    report = f"the stand-in saw:\n{standin.report(payment_id)}\nevents: {events}"
    problems = standin.problems(payment_id)
    assert not problems, f"invalid requests: {problems}\n{report}"
    assert not standin.bugs, standin.bugs
    assert standin.blind(payment_id) == [], report
    assert len(standin.live(payment_id)) == live, report
    assert len(standin.all_receipts(payment_id)) == 1, report
    mine = events_of(results, payment_id)
    assert sorted(event["data"]["task_id"] for event in mine) == sorted(task_ids), report
    return events


@pytest.fixture
def results(v2_redis: RedisServer) -> ResultStream:
    return ResultStream(v2_redis.client())


WORKER = pytest.mark.usefixtures("v2_worker")


@WORKER
def test_an_external_receipt_is_issued_once_with_a_valid_request(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id, tax_free=3000))
    [event] = check(standin, results, payment_id, [task_id])
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False), event
    [issue] = standin.posts(payment_id)
    assert issue.body["paymentId"] == payment_id
    assert issue.body["amount"] == {"total": 33000, "taxFree": 3000}
    assert issue.body["customer"]["identityNumber"] == PHONE
    assert event["data"]["receipt"]["apply_num"] == standin.live(payment_id)[0].issue_number


@WORKER
def test_a_payment_is_read_then_issued_for_its_amount(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    standin.add_payment(Payment(payment_id, total=33000))
    task_id = push_raw(
        results_client(results), "issue_cash_receipt", payload(standin, payment_id, kind="payment")
    )
    [event] = check(standin, results, payment_id, [task_id])
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False), event
    operations = [seen.operation for seen in standin.requests_for(payment_id)]
    assert operations[0] == "getPayment", standin.report(payment_id)
    assert operations.count(ISSUE) == 1


def results_client(results: ResultStream) -> redis.Redis:
    return results._redis


@WORKER
@pytest.mark.parametrize(
    "fault",
    [
        Fault("drop_after"),
        Fault("late", seconds=3),
        Fault("gateway_after", status=502),
        Fault("gateway", status=502),
        Fault("gateway", status=504),
        Fault("gateway", status=503, body=b"", content_type=None, headers={"Retry-After": "1"}),
    ],
    ids=[
        "acted-answer-dropped",
        "acted-answer-after-the-timeout",
        "acted-then-gateway-502-html",
        "gateway-502-html",
        "gateway-504-html",
        "gateway-empty-503-retry-after",
    ],
)
def test_a_lost_or_foreign_answer_ends_in_one_receipt_found_or_issued(
    standin: StandIn,
    checkout: Celery,
    results: ResultStream,
    payment_id: str,
    fault: Fault,
) -> None:
    """PortOne acted and its answer was lost (the lookup must find the receipt), or
    something in front of it answered without PortOne acting (a retry must issue)."""
    standin.script(payment_id, ISSUE, fault)
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id))
    [event] = check(standin, results, payment_id, [task_id])
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False), event
    assert event["data"]["receipt"]["apply_num"] == standin.live(payment_id)[0].issue_number
    assert standin.posts(payment_id)[0].fault == fault.describe(), standin.report(payment_id)


@WORKER
def test_a_key_still_being_processed_answers_409_and_no_second_key_is_sent(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    """PortOne holds the first POST longer than the client's timeout and the settle
    bound: the retry under the same key gets 409 IDEMPOTENCY_OUTSTANDING_REQUEST."""
    standin.script(payment_id, ISSUE, Fault("slow", seconds=2.5))
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id))
    [event] = check(standin, results, payment_id, [task_id])
    assert event["type"] == "cash_receipt.issued", event
    posts = standin.posts(payment_id)
    assert any(seen.status == 409 for seen in posts), standin.report(payment_id)
    assert len({seen.key for seen in posts}) == 1, standin.report(payment_id)


@WORKER
def test_duplicate_confirmations_make_one_receipt_and_one_event_each(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    """The same confirmation three times: two at once (Python and raw), one after."""
    standin.script(payment_id, ISSUE, Fault("late", seconds=0.5))
    body = payload(standin, payment_id)
    first = send(checkout, "issue_cash_receipt", body)
    second = push_raw(results_client(results), "issue_cash_receipt", body)
    results.wait(first, timeout=EVENT_WAIT)
    third = send(checkout, "issue_cash_receipt", body)
    events = check(standin, results, payment_id, [first, second, third])
    assert [event["type"] for event in events] == ["cash_receipt.issued"] * 3, events
    assert sorted(event["data"]["duplicate"] for event in events) == [False, True, True], events
    assert len(standin.posts(payment_id)) == 1, standin.report(payment_id)


@WORKER
@pytest.mark.parametrize("lost", [False, True], ids=["answered", "answer-dropped"])
def test_a_full_refund_cancels_the_one_receipt(
    standin: StandIn,
    checkout: Celery,
    results: ResultStream,
    payment_id: str,
    lost: bool,
) -> None:
    body = payload(standin, payment_id)
    issued = results.wait(send(checkout, "issue_cash_receipt", body), timeout=EVENT_WAIT)
    assert issued["type"] == "cash_receipt.issued", issued
    if lost:
        standin.script(payment_id, CANCEL, Fault("drop_after"))
    refund = {"provider": "portone", "kind": "external", "payment_id": payment_id}
    task_id = send(checkout, "cancel_cash_receipt", refund)
    [event] = check(
        standin,
        results,
        payment_id,
        [issued["data"]["task_id"], task_id],
        live=0,
    )[1:]
    assert event["type"] == "cash_receipt.cancelled", event
    assert event["data"]["receipt"]["cancelled_at"], event
    assert len({seen.key for seen in standin.posts(payment_id, CANCEL)}) == 1


@pytest.fixture
def sub_store(standin: StandIn) -> Iterator[StandIn]:
    """The API secret is the merchant's, whose own store is another (a 하위 상점 setup)."""
    standin.default_store = "store-merchant-default"
    yield standin
    standin.default_store = standin.store_id


@WORKER
def test_every_request_names_the_configured_store(
    sub_store: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    standin = sub_store
    issued = results.wait(
        send(checkout, "issue_cash_receipt", payload(standin, payment_id)), timeout=EVENT_WAIT
    )
    refund = {"provider": "portone", "kind": "external", "payment_id": payment_id}
    task_id = send(checkout, "cancel_cash_receipt", refund)
    events = check(standin, results, payment_id, [issued["data"]["task_id"], task_id], live=0)
    assert events[1]["type"] == "cash_receipt.cancelled", events


@WORKER
def test_a_payment_refund_whose_cancel_is_outstanding_cancels_once(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    """A PortOne payment's full refund; PortOne holds the cancel past the timeout and the
    settle bound, so the retry under the same key gets 409 outstanding: one cancel key."""
    standin.add_payment(Payment(payment_id, total=33000))
    standin.script(payment_id, CANCEL, Fault("slow", seconds=2.5))
    issue = send(checkout, "issue_cash_receipt", payload(standin, payment_id, kind="payment"))
    assert results.wait(issue, timeout=EVENT_WAIT)["type"] == "cash_receipt.issued"
    refund = {"provider": "portone", "kind": "payment", "payment_id": payment_id}
    cancel = send(checkout, "cancel_cash_receipt", refund)
    events = check(standin, results, payment_id, [issue, cancel], live=0)
    assert events[1]["type"] == "cash_receipt.cancelled", events
    cancels = standin.posts(payment_id, CANCEL)
    assert len({seen.key for seen in cancels}) == 1, standin.report(payment_id)


@WORKER
def test_a_receipt_issued_in_the_payment_window_is_adopted_without_a_post(
    standin: StandIn, checkout: Celery, results: ResultStream, payment_id: str
) -> None:
    standin.add_payment(Payment(payment_id, total=33000))
    standin.seed_receipt(payment_id, issue_body(standin, payment_id))
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id, kind="payment"))
    [event] = check(standin, results, payment_id, [task_id])
    assert event["type"] == "cash_receipt.issued", event
    assert standin.posts(payment_id) == [], standin.report(payment_id)


@WORKER
def test_reconcile_looks_a_v2_job_up_with_a_valid_list_request(
    v2_redis: RedisServer,
    standin: StandIn,
    checkout: Celery,
    results: ResultStream,
    payment_id: str,
) -> None:
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id))
    check(standin, results, payment_id, [task_id])
    done = run_cashreceipt(v2_env(v2_redis, standin), "reconcile", f"portone:{payment_id}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [seen.operation for seen in standin.requests_for(payment_id)][-1] == LIST
    assert standin.problems(payment_id) == [], standin.report(payment_id)


# -- a worker killed mid-request (last: it kills the module's worker) -----------------------------


def test_a_worker_killed_mid_post_is_settled_by_the_next_without_a_second_receipt(
    v2_redis: RedisServer,
    v2_worker: ProcessOutput,
    standin: StandIn,
    checkout: Celery,
    results: ResultStream,
    payment_id: str,
) -> None:
    """SIGKILL while PortOne holds the answer to a POST it acted on; the restarted
    worker takes the job over (after the lease) and must find the receipt, not POST anew."""
    standin.script(payment_id, ISSUE, Fault("late", seconds=60))
    task_id = send(checkout, "issue_cash_receipt", payload(standin, payment_id))
    wait_for(lambda: standin.posts(payment_id), timeout=15, message="the POST")
    os.kill(v2_worker.pid, signal.SIGKILL)
    settled(standin, payment_id)
    with running_worker(v2_env(v2_redis, standin)):
        # The lease (16 s here), then the sweep or the broker's restore scan.
        [event] = check(standin, results, payment_id, [task_id], timeout=40)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False), event
