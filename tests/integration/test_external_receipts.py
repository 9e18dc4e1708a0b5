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

from tests.support.commands import run_cashreceipt
from tests.support.payloads import PHONE, external_payload
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, wait_external_posts_processed
from tests.support.worker import ProcessOutput, producer_app, running_worker, worker_env
from worker.adapters.store.keys import JOB_PREFIX, LEDGER_PREFIX
from worker.celery.producer import enqueue_issue

pytestmark = pytest.mark.integration
REFUSED = "12345678901"  # the sandbox's tax service refuses it (TS1)


def posts(sandbox: Sandbox, merchant_uid: str) -> list[dict[str, Any]]:
    return [r for r in sandbox.admin.external_requests(merchant_uid) if r["method"] == "POST"]


def json_lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The JSON lines a command printed."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def cancel_behind_our_back(sandbox: Sandbox, merchant_uid: str) -> None:
    """The external receipt cancelled at i'mport, by someone other than the worker."""
    requests.delete(
        f"{sandbox.url}/receipts/external/{merchant_uid}",
        headers={"Authorization": f"Bearer {sandbox.get_token()}"},
        timeout=5,
    ).raise_for_status()


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
    key = f"iamport-external:{merchant_uid}"
    shown = json.loads(run_cashreceipt(env, "status", "--json", key).stdout)
    assert (shown["receipt_key"], shown["imp_uid"]) == (key, None)
    assert (shown["ledger"]["state"], shown["event"]["data"]["task_id"]) == ("issued", task_id)
    settled = json.loads(run_cashreceipt(env, "settle", "--json", key).stdout)
    assert settled == {"imp_uid": None, "receipt_key": key, "outcome": "issued"}
    forced = run_cashreceipt(env, "status", "--json", "--imp-uid", key)
    assert forced.returncode == 1  # no payment has that imp_uid
    assert json.loads(forced.stdout)["receipt_key"] == f"iamport:{key}"


@pytest.mark.usefixtures("worker")
def test_replay_takes_a_receipt_key_and_sends_the_kept_external_payload_again(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """A refused external receipt is a dead letter named by its receipt key; ``replay
    iamport-external:<merchant_uid>`` with the corrected identifier issues it through the
    external path, once. ``--imp-uid`` reads the key as an imp_uid: no such job."""
    key = f"iamport-external:{merchant_uid}"
    refused = external_payload(merchant_uid, identifier=REFUSED)
    failed = results.wait(enqueue_issue(refused, app=producer))
    assert failed["data"]["error"]["reason"] == "rejected"
    env = worker_env(redis_server.url, sandbox.url)
    listed = json_lines(run_cashreceipt(env, "dead", "--json"))
    dead = [job for job in listed if job.get("receipt_key") == key]
    assert [(job["imp_uid"], job["failed"], job["state"]) for job in dead] == [
        (None, "issue", "failed")
    ]
    assert REFUSED not in json.dumps(dead)

    forced = run_cashreceipt(env, "replay", "--json", "--imp-uid", key)
    assert forced.returncode == 1, forced.stderr
    assert json_lines(forced) == [
        {
            "imp_uid": key,
            "receipt_key": f"iamport:{key}",
            "task_id": None,
            "skipped": "state is unknown",
        }
    ]

    replayed = run_cashreceipt(env, "replay", key, "--identifier-stdin", stdin=f"{PHONE}\n")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith(f"{key}: replayed as task "), replayed.stdout
    assert PHONE not in replayed.stdout + replayed.stderr
    issued = results.wait(replayed.stdout.split()[-1])
    assert (issued["type"], issued["data"]["receipt_key"]) == ("cash_receipt.issued", key)
    assert issued["data"]["receipt"]["amount"] == 33000
    assert sandbox.admin.external_issued_count(merchant_uid) == 1
    assert {post["path"] for post in posts(sandbox, merchant_uid)} == {
        f"/receipts/external/{merchant_uid}"
    }
    listed = json_lines(run_cashreceipt(env, "dead", "--json"))
    assert not [job for job in listed if job.get("receipt_key") == key]


@pytest.mark.usefixtures("worker")
def test_reconcile_takes_a_receipt_key_and_looks_up_the_external_receipt(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    redis_server: RedisServer,
    merchant_uid: str,
) -> None:
    """``reconcile iamport-external:<merchant_uid>`` asks GET /receipts/external/{merchant_uid}:
    clean while the receipt is live; cancelled behind the worker's back, a mismatch named
    by the receipt key (exit 1)."""
    key = f"iamport-external:{merchant_uid}"
    results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    env = worker_env(redis_server.url, sandbox.url)
    clean = run_cashreceipt(env, "reconcile", "--json", key)
    assert (clean.returncode, clean.stdout) == (0, ""), clean.stderr
    assert "1 checked, 0 mismatched, 0 not checked" in clean.stderr
    cancel_behind_our_back(sandbox, merchant_uid)
    found = run_cashreceipt(env, "reconcile", "--json", key)
    assert found.returncode == 1, found.stderr
    assert json_lines(found) == [
        {"imp_uid": None, "receipt_key": key, "ledger": "issued", "iamport": "no active receipt"}
    ]
    text = run_cashreceipt(env, "reconcile", key)
    assert (text.returncode, text.stdout) == (
        1,
        f"{key}: ledger issued, i'mport no active receipt\n",
    )
    lookups = [r for r in sandbox.admin.external_requests(merchant_uid) if r["method"] == "GET"]
    assert len(lookups) >= 3
    assert {r["path"] for r in lookups} == {f"/receipts/external/{merchant_uid}"}


def test_replay_by_reason_and_reconcile_of_every_record_take_in_external_receipts(
    own_redis: RedisServer, sandbox: Sandbox, merchant_uid: str
) -> None:
    """On a Redis of its own: a payment and an external receipt both refused, then
    ``replay --reason rejected`` re-sends both, each named by its receipt key; ``reconcile``
    with no argument checks both records, and finds the external one cancelled behind the
    worker's back."""
    imp_uid = f"imp_{uuid.uuid4().hex[:12]}"
    key = f"iamport-external:{merchant_uid}"
    refusals = [{"kind": "reject", "message": "PG down", "method": "POST"}] * 3
    sandbox.admin.script(imp_uid, *refusals)
    sandbox.admin.script_external(merchant_uid, *refusals)
    env = worker_env(own_redis.url, sandbox.url)
    producer = producer_app(own_redis.url)
    stream = ResultStream(own_redis.client())
    try:
        with running_worker(env):
            failed = [
                stream.wait(enqueue_issue(payload, app=producer), timeout=30)
                for payload in (
                    {"imp_uid": imp_uid, "identifier": PHONE},
                    external_payload(merchant_uid),
                )
            ]
            assert [event["data"]["error"]["reason"] for event in failed] == ["rejected"] * 2
            replayed = run_cashreceipt(env, "replay", "--json", "--reason", "rejected")
            assert replayed.returncode == 0, replayed.stderr
            outcomes = {line["receipt_key"]: line for line in json_lines(replayed)}
            assert set(outcomes) == {f"iamport:{imp_uid}", key}
            assert (outcomes[key]["imp_uid"], outcomes[f"iamport:{imp_uid}"]["imp_uid"]) == (
                None,
                imp_uid,
            )
            issued = [stream.wait(str(line["task_id"]), timeout=30) for line in outcomes.values()]
        assert [event["type"] for event in issued] == ["cash_receipt.issued"] * 2
        everything = run_cashreceipt(env, "reconcile", "--json")
        assert (everything.returncode, everything.stdout) == (0, ""), everything.stderr
        assert "2 checked, 0 mismatched, 0 not checked" in everything.stderr
        assert "stopped at --limit" not in everything.stderr
        # A limit that cuts the records short says so (it was silent: helper-63's finding).
        cut = run_cashreceipt(env, "reconcile", "--json", "--limit", "1")
        assert "stopped at --limit 1: the ledger may hold more records" in cut.stderr
        cancel_behind_our_back(sandbox, merchant_uid)
        found = run_cashreceipt(env, "reconcile", "--json")
        assert found.returncode == 1, found.stderr
        assert [(line["receipt_key"], line["iamport"]) for line in json_lines(found)] == [
            (key, "no active receipt")
        ]
    finally:
        producer.close()


@pytest.mark.usefixtures("worker")
def test_a_sale_confirmed_after_an_id_conflict_looks_before_it_posts(
    producer: Celery, sandbox: Sandbox, results: ResultStream, merchant_uid: str
) -> None:
    """helper-63's model finding: the job failed id_conflict beside a live receipt; the
    sale that receipt is for, confirmed now, re-opens the job, and its first attempt
    looks (no blind POST: the session's check counts them) and adopts it."""
    _issue_directly(sandbox, merchant_uid, 11000)
    other = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert other["data"]["error"]["reason"] == "id_conflict"
    sale = results.wait(enqueue_issue(external_payload(merchant_uid, amount=11000), app=producer))
    assert (sale["type"], sale["data"]["duplicate"]) == ("cash_receipt.issued", True)
    assert len(posts(sandbox, merchant_uid)) == 1  # the merchant's own, outside the worker


@pytest.mark.usefixtures("worker")
@pytest.mark.parametrize(
    "changed", [{"identifier": "01033334444"}, {"tax_free": 33000}], ids=["buyer", "tax_free"]
)
def test_another_buyer_or_tax_split_under_the_id_is_another_sale(
    changed: dict[str, Any],
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    merchant_uid: str,
) -> None:
    """Review finding F8: the same total under a reused merchant_uid, for another buyer or
    another tax-free part than the job's kept payload, is id_conflict, never a duplicate
    of the first sale's receipt (a confirmation that overlaps the first one in flight
    still hears its outcome, as the README says)."""
    first = results.wait(enqueue_issue(external_payload(merchant_uid), app=producer))
    assert first["type"] == "cash_receipt.issued"
    other = results.wait(enqueue_issue(external_payload(merchant_uid, **changed), app=producer))
    assert (other["type"], other["data"]["error"]["reason"]) == (
        "cash_receipt.failed",
        "id_conflict",
    )
    assert len(posts(sandbox, merchant_uid)) == 1
