"""V1 external receipts (issue 15): cash taken outside i'mport, through a real worker.

``kind: external`` payloads are issued with ``POST /receipts/external/{merchant_uid}``
under the same exactly-once rules as a payment's: recorded before they are sent,
looked up before a retry POSTs, an ambiguous answer settled by a lookup after
``IAMPORT_SETTLE_SECONDS``. Merchants reuse their own ids, so a receipt found under the
merchant_uid for another amount is another sale's: ``id_conflict``, never a duplicate.
The sandbox runs ``--allow-duplicates`` where a second POST must be visible, and the
session's check of blind requests covers external receipts too.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest
import requests
from celery import Celery

from tests.support.payloads import PHONE, external_payload
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, wait_external_posts_processed
from tests.support.worker import BIN, ProcessOutput, producer_app, running_worker, worker_env
from worker.adapters.store.keys import JOB_PREFIX, LEDGER_PREFIX
from worker.celery.producer import enqueue_issue

pytestmark = pytest.mark.integration


@pytest.fixture
def merchant_uid() -> str:
    """An order nobody has seen yet."""
    return f"order-{uuid.uuid4().hex[:12]}"


def posts(sandbox: Sandbox, merchant_uid: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.admin.external_requests(merchant_uid) if r["method"] == "POST"]


@pytest.mark.usefixtures("worker")
def test_an_external_receipt_is_issued_once_and_named_by_its_merchant_uid(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """One POST to the external path with i'mport's field names; one event naming the
    job ``iamport-external:<merchant_uid>``; the record outside the payments' prefix."""
    task_id = enqueue_issue(
        external_payload(merchant_uid, tax_free=3000, pay_method="trans"), app=producer
    )
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.issued"
    data = event["data"]
    assert {key: data[key] for key in ("receipt_key", "provider", "kind", "imp_uid")} == {
        "receipt_key": f"iamport-external:{merchant_uid}",
        "provider": "iamport",
        "kind": "external",
        "imp_uid": None,
    }
    assert data["merchant_uid"] == merchant_uid
    assert (data["receipt"]["merchant_uid"], data["receipt"]["amount"]) == (merchant_uid, 33000)
    assert data["receipt"]["vat"] == (33000 - 3000) // 11
    [post] = posts(sandbox, merchant_uid)
    assert post["path"] == f"/receipts/external/{merchant_uid}"
    assert {key: post["body"][key] for key in ("channel_key", "name", "amount", "tax_free")} == {
        "channel_key": "channel-key-test",
        "name": "Counter sale",
        "amount": 33000,
        "tax_free": 3000,
    }
    assert "order_name" not in post["body"] and "kind" not in post["body"]
    client = redis_server.client()
    assert client.exists(f"{JOB_PREFIX}iamport-external:{merchant_uid}")
    assert not client.exists(f"{LEDGER_PREFIX}{merchant_uid}")
    assert PHONE not in str(results.all())


@pytest.mark.usefixtures("worker")
def test_the_same_sale_twice_is_one_receipt_another_sale_under_its_id_is_a_conflict(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """The same payload again is a duplicate of the receipt; a payload for another amount
    under the same merchant_uid is another sale: ``id_conflict``, nothing sent."""
    first = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    again = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    other = results.wait(enqueue_issue(external_payload(merchant_uid, amount=11000), app=producer))
    assert (first["type"], first["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert (again["type"], again["data"]["duplicate"]) == ("cash_receipt.issued", True)
    assert again["data"]["receipt"] == first["data"]["receipt"]
    assert (other["type"], other["data"]["duplicate"]) == ("cash_receipt.failed", False)
    assert other["data"]["error"]["reason"] == "id_conflict"
    assert len(posts(sandbox, merchant_uid)) == 1
    assert sandbox.admin.external_issued_count(merchant_uid) == 1


def _issue_directly(sandbox: Sandbox, merchant_uid: str, amount: int) -> None:
    """A receipt the merchant issued under this id before, outside the worker."""
    response = requests.post(
        f"{sandbox.url}/receipts/external/{merchant_uid}",
        json={**external_payload(merchant_uid), "name": "Earlier sale", "amount": amount},
        headers={"Authorization": f"Bearer {sandbox.get_token()}"},
        timeout=5,
    )
    response.raise_for_status()


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(("earlier", "outcome"), [(33000, "issued"), (11000, "failed")])
def test_already_issued_is_a_duplicate_only_for_the_same_amount(
    earlier: int,
    outcome: str,
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    merchant_uid: str,
) -> None:
    """i'mport answers 400 "already issued": the lookup decides. The same amount is this
    sale's receipt, a duplicate; another amount is another sale's, never adopted."""
    _issue_directly(sandbox, merchant_uid, earlier)
    event = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert event["type"] == f"cash_receipt.{outcome}"
    if outcome == "issued":
        assert event["data"]["duplicate"] is True
        assert event["data"]["receipt"]["amount"] == 33000
    else:
        assert event["data"]["error"]["reason"] == "id_conflict"
        assert event["data"]["error"]["retryable"] is False
    assert sandbox.admin.external_issued_count(merchant_uid) == 1


#: The worker's read timeout, and how late the sandbox acts on the first POST: past the
#: timeout, well inside the settle bound the worker waits out before it looks.
TIMEOUT, LATE_POST_MS, SETTLE_SECONDS = 0.25, 3000, 5


def test_an_answer_lost_to_a_timeout_is_settled_by_a_lookup_not_a_second_post(
    own_redis: RedisServer, honest_sandbox: Sandbox, merchant_uid: str
) -> None:
    """The POST times out and i'mport acts on it seconds later: the retry waits out
    IAMPORT_SETTLE_SECONDS, looks, and adopts it. One receipt, one event."""
    honest_sandbox.admin.script_external(
        merchant_uid, {"kind": "latency", "ms": LATE_POST_MS, "method": "POST"}
    )
    env = worker_env(
        own_redis.url,
        honest_sandbox.url,
        IAMPORT_TIMEOUT=str(TIMEOUT),
        IAMPORT_SETTLE_SECONDS=str(SETTLE_SECONDS),
        RETRY_MAX_ATTEMPTS="20",
    )
    producer = producer_app(own_redis.url)
    try:
        with running_worker(env):
            task_id = enqueue_issue(external_payload(merchant_uid), app=producer)
            event = ResultStream(own_redis.client()).wait(task_id, timeout=40)
            wait_external_posts_processed(
                honest_sandbox.admin, merchant_uid, timeout=LATE_POST_MS / 1000 + 5
            )
    finally:
        producer.close()
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert len(posts(honest_sandbox, merchant_uid)) == 1
    audit = honest_sandbox.admin.audit()["external"]
    assert audit["double_active"] == []
    assert audit["merchant_uids"][merchant_uid]["created"] == 1


def test_a_worker_without_the_external_path_never_takes_the_id_for_an_imp_uid(
    worker: ProcessOutput, producer: Celery, sandbox: Sandbox, results: ResultStream
) -> None:
    """A payment and an external receipt may carry the same string: two jobs, two keys."""
    shared = f"same-{uuid.uuid4().hex[:8]}"
    sandbox.admin.seed_payment(shared)
    payment = results.wait(enqueue_issue({"imp_uid": shared, "identifier": PHONE}, app=producer))
    outside = results.wait(enqueue_issue(external_payload(shared), app=producer))
    assert [payment["type"], outside["type"]] == ["cash_receipt.issued"] * 2
    assert [payment["data"]["receipt_key"], outside["data"]["receipt_key"]] == [
        f"iamport:{shared}",
        f"iamport-external:{shared}",
    ]
    assert outside["data"]["duplicate"] is False
    assert sandbox.admin.issued_count(shared) == 1
    assert sandbox.admin.external_issued_count(shared) == 1


@pytest.mark.usefixtures("worker")
def test_status_and_settle_take_a_receipt_key(
    producer: Celery, sandbox: Sandbox, results: ResultStream, redis_server: RedisServer
) -> None:
    """``cashreceipt status`` and ``settle`` take ``iamport-external:<merchant_uid>``; a
    bare string is still an imp_uid, and ``--imp-uid`` reads even a prefixed one as one."""
    merchant_uid = f"order-{uuid.uuid4().hex[:8]}"
    task_id = enqueue_issue(external_payload(merchant_uid), app=producer)
    results.wait(task_id)
    env = worker_env(redis_server.url, sandbox.url)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "cashreceipt"), *args], env=env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    key = f"iamport-external:{merchant_uid}"
    shown = json.loads(cli("status", "--json", key).stdout)
    assert (shown["receipt_key"], shown["imp_uid"]) == (key, None)
    assert (shown["ledger"]["state"], shown["event"]["data"]["task_id"]) == ("issued", task_id)
    settled = json.loads(cli("settle", "--json", key).stdout)
    assert settled == {"imp_uid": None, "receipt_key": key, "outcome": "issued"}
    forced = cli("status", "--json", "--imp-uid", key)
    assert forced.returncode == 1  # no payment has that imp_uid
    assert json.loads(forced.stdout)["receipt_key"] == f"iamport:{key}"
