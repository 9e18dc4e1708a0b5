"""Jobs that failed for good: listed as dead letters, replayed once the cause is fixed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import producer_app, running_worker, worker_env
from worker.adapters.store.keys import ledger_key
from worker.celery.producer import enqueue_cancel, enqueue_issue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("worker")]
CLI = str(Path(sys.executable).parent / "cashreceipt")
REFUSED = "12345678901"  # the sandbox's tax service refuses it (TS1)


def cli(
    redis_server: RedisServer, sandbox: Sandbox, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``cashreceipt <command> --json ...`` with the test worker's settings."""
    return subprocess.run(
        [CLI, args[0], "--json", *args[1:]],
        env=worker_env(redis_server.url, sandbox.url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    """The JSON lines a command printed."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("given", "stdin"),
    [
        # The safe way: the identifier stays out of argv (ps, shell history).
        (["--identifier-stdin"], "010-5555-4321\n"),
        (["--identifier", "010-5555-4321"], ""),
    ],
)
def test_rejected_job_is_dead_then_replayed_with_a_corrected_identifier(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
    given: list[str],
    stdin: str,
) -> None:
    """dead lists it with its reason; replay with the right identifier issues it; history stays."""
    failed = results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": REFUSED}, app=producer))
    assert failed["data"]["error"]["reason"] == "rejected"

    dead = [
        job for job in lines(cli(redis_server, sandbox, "dead")) if job.get("imp_uid") == imp_uid
    ]
    assert len(dead) == 1
    assert dead[0]["last_error"]["reason"] == "rejected"  # type: ignore[index]
    assert dead[0]["receipt_key"] == f"iamport:{imp_uid}"
    assert REFUSED not in json.dumps(dead)

    replayed = cli(redis_server, sandbox, "replay", imp_uid, *given, stdin=stdin)
    assert replayed.returncode == 0, replayed.stderr
    assert "5555" not in replayed.stdout + replayed.stderr
    (outcome,) = lines(replayed)
    assert (outcome["imp_uid"], outcome["receipt_key"]) == (imp_uid, f"iamport:{imp_uid}")
    issued = results.wait(str(outcome["task_id"]))
    assert issued["type"] == "cash_receipt.issued"
    assert sandbox.admin.issued_count(imp_uid) == 1
    assert not [j for j in lines(cli(redis_server, sandbox, "dead")) if j.get("imp_uid") == imp_uid]

    status = json.loads(cli(redis_server, sandbox, "status", imp_uid).stdout)
    outcomes = [entry["outcome"] for entry in status["history"]]
    assert outcomes[0] == "cash_receipt.issued"
    assert "cash_receipt.failed" in outcomes  # the earlier, rejected attempts are kept


def test_replay_by_reason_after_credentials_are_restored(
    redis_server: RedisServer, sandbox: Sandbox, results: ResultStream, imp_uid: str
) -> None:
    """Jobs that failed on auth are all replayed by reason once the credentials are right."""
    # A key i'mport does not know (and so no shared token cached for it).
    bad = worker_env(redis_server.url, sandbox.url, IAMPORT_KEY="revoked-key")
    producer = producer_app(redis_server.url)
    producer.conf.pii_encryption_keys = [bad["PII_ENCRYPTION_KEYS"]]
    uids = [f"{imp_uid}_{n}" for n in range(3)]
    # A queue of its own, so that the session worker (good credentials) does not take them.
    with running_worker(bad, "-Q", "cash_receipts_auth_test"):
        tasks = [
            str(
                producer.send_task(
                    "issue_cash_receipt",
                    args=[{"imp_uid": uid, "identifier": "01055554321"}],
                    queue="cash_receipts_auth_test",
                ).id
            )
            for uid in uids
        ]
        assert {results.wait(t)["data"]["error"]["reason"] for t in tasks} == {"auth"}
    replayed = cli(redis_server, sandbox, "replay", "--reason", "auth")
    new_tasks = [str(o["task_id"]) for o in lines(replayed) if o["imp_uid"] in uids]
    assert len(new_tasks) == 3
    assert {results.wait(t)["type"] for t in new_tasks} == {"cash_receipt.issued"}


def test_reconcile_finds_a_receipt_cancelled_behind_our_back(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """The ledger says issued, i'mport has no active receipt: reconcile reports it, exit 1."""
    results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer))
    assert cli(redis_server, sandbox, "reconcile", imp_uid).returncode == 0
    requests.delete(
        f"{sandbox.url}/receipts/{imp_uid}",
        headers={"Authorization": f"Bearer {sandbox.get_token()}"},
        timeout=5,
    ).raise_for_status()
    result = cli(redis_server, sandbox, "reconcile", imp_uid)
    assert result.returncode == 1
    assert lines(result) == [
        {
            "imp_uid": imp_uid,
            "receipt_key": f"iamport:{imp_uid}",
            "ledger": "issued",
            "iamport": "no active receipt",
        }
    ]


def test_reconcile_finds_a_receipt_the_ledger_did_not_record(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """i'mport's active receipt is not the ledger's: what a POST acted on beyond
    IAMPORT_SETTLE_SECONDS leaves behind. Reconcile reports it, exit 1."""
    results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer))
    headers = {"Authorization": f"Bearer {sandbox.get_token()}"}
    # Another receipt in place of ours, as a late POST leaves it on a PG that allows two.
    for method in ("DELETE", "POST"):
        requests.request(
            method,
            f"{sandbox.url}/receipts/{imp_uid}",
            headers=headers,
            json={"identifier": "01055554321"} if method == "POST" else None,
            timeout=5,
        ).raise_for_status()
    result = cli(redis_server, sandbox, "reconcile", imp_uid)
    assert result.returncode == 1
    assert lines(result) == [
        {
            "imp_uid": imp_uid,
            "receipt_key": f"iamport:{imp_uid}",
            "ledger": "issued",
            "iamport": "another active receipt than the ledger's",
        }
    ]


def issued_pair(producer: Celery, results: ResultStream, imp_uid: str) -> tuple[str, str]:
    """Two payments with their receipt issued: one for i'mport to refuse, one past it."""
    pair = (f"{imp_uid}_a", f"{imp_uid}_b")
    for uid in pair:
        results.wait(enqueue_issue({"imp_uid": uid, "identifier": "01055554321"}, app=producer))
    return pair


def test_reconcile_checks_every_payment_past_one_i_mport_did_not_answer_for(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """One lookup answered 503 (a rate limit or a blip, over a long list) must not hide a
    mismatch further down: the list is the operator's only view of late double issues."""
    first, second = issued_pair(producer, results, imp_uid)
    requests.delete(
        f"{sandbox.url}/receipts/{second}",
        headers={"Authorization": f"Bearer {sandbox.get_token()}"},
        timeout=5,
    ).raise_for_status()
    sandbox.admin.script(first, *[{"kind": "status", "status": 503, "method": "GET"}] * 20)
    result = cli(redis_server, sandbox, "reconcile", first, second)
    assert lines(result) == [
        {
            "imp_uid": first,
            "receipt_key": f"iamport:{first}",
            "ledger": "issued",
            "not_checked": "unavailable",
            "status": 503,
        },
        {
            "imp_uid": second,
            "receipt_key": f"iamport:{second}",
            "ledger": "issued",
            "iamport": "no active receipt",
        },
    ], result.stdout + result.stderr
    assert result.returncode == 1  # a mismatch outranks what could not be checked
    assert "1 checked, 1 mismatched, 1 not checked" in result.stderr


def test_reconcile_that_could_not_check_a_payment_is_not_clean(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """No mismatch but a payment i'mport would not answer for (429 after 429): exit 4, never 0,
    so automation cannot take "could not verify" for "clean"; the line names the reason."""
    first, second = issued_pair(producer, results, imp_uid)
    sandbox.admin.script(
        first,
        *[{"kind": "answer", "status": 429, "retry_after": 1, "method": "GET"}] * 20,
    )
    result = cli(redis_server, sandbox, "reconcile", first, second)
    assert result.returncode == 4, result.stdout + result.stderr
    assert lines(result) == [
        {
            "imp_uid": first,
            "receipt_key": f"iamport:{first}",
            "ledger": "issued",
            "not_checked": "rate_limited",
            "status": 429,
        }
    ]
    assert "1 checked, 0 mismatched, 1 not checked" in result.stderr
    assert "5555" not in result.stdout + result.stderr


def test_reconcile_retries_a_lookup_i_mport_briefly_refused(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """Two 503s, then an answer: the third lookup checks the payment, and it is clean."""
    results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer))
    sandbox.admin.script(imp_uid, *[{"kind": "status", "status": 503, "method": "GET"}] * 2)
    result = cli(redis_server, sandbox, "reconcile", imp_uid)
    assert (result.returncode, lines(result)) == (0, []), result.stdout + result.stderr
    assert "1 checked, 0 mismatched, 0 not checked" in result.stderr


def test_tail_prints_the_events(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """tail --from-start --count N prints N events as JSON lines, without personal data."""
    results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer))
    shown = lines(cli(redis_server, sandbox, "tail", "--from-start", "--count", "3"))
    assert len(shown) == 3
    assert all(str(event["type"]).startswith("cash_receipt.") for event in shown)
    assert "5555" not in json.dumps(shown)


def test_final_cancel_failure_is_dead_and_replayable(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """A refund whose DELETE never got through is a dead letter; replay cancels the receipt."""
    issued = results.wait(
        enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer)
    )
    assert issued["type"] == "cash_receipt.issued"
    # Every DELETE of the test worker's budget (RETRY_MAX_ATTEMPTS=5) meets an outage.
    sandbox.admin.script(imp_uid, *[{"kind": "status", "status": 503, "method": "DELETE"}] * 5)
    failed = results.wait(enqueue_cancel({"imp_uid": imp_uid}, app=producer))
    assert (failed["type"], failed["data"]["error"]["reason"]) == (
        "cash_receipt.cancel_failed",
        "retries_exhausted",
    )

    listed = cli(redis_server, sandbox, "dead", "--reason", "retries_exhausted")
    dead = [job for job in lines(listed) if job.get("imp_uid") == imp_uid]
    assert len(dead) == 1, listed.stdout
    assert (dead[0]["failed"], dead[0]["state"], dead[0]["op"]) == ("cancel", "issued", "cancel")

    replayed = cli(redis_server, sandbox, "replay", imp_uid)
    assert replayed.returncode == 0, replayed.stderr
    (outcome,) = lines(replayed)
    cancelled = results.wait(str(outcome["task_id"]))
    assert (cancelled["type"], cancelled["data"]["duplicate"]) == ("cash_receipt.cancelled", False)
    assert cancelled["data"]["receipt"]["apply_num"] == issued["data"]["receipt"]["apply_num"]
    assert redis_server.client().hget(ledger_key(imp_uid), "state") == "cancelled"
    assert not [j for j in lines(cli(redis_server, sandbox, "dead")) if j.get("imp_uid") == imp_uid]


def refund_reissuing_nothing(
    producer: Celery,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
    before_refund: Callable[[], object],
) -> list[dict[str, Any]]:
    """A receipt for 33000, ``before_refund``, then a refund of 11000 that re-issues
    nothing: its two events (cancelled, failed), in stream order."""
    sandbox.admin.seed_payment(imp_uid, amount=33000)
    results.wait(enqueue_issue({"imp_uid": imp_uid, "identifier": "01055554321"}, app=producer))
    before_refund()
    sandbox.admin.seed_payment(imp_uid, cancel_amount=11000)
    task_id = enqueue_cancel({"imp_uid": imp_uid, "amount": 11000}, app=producer)
    wait_for(lambda: len(results.for_task(task_id)) == 2, message="both events of the refund")
    events = sorted(results.for_task(task_id), key=lambda e: e["id"])
    assert [e["type"] for e in events] == ["cash_receipt.cancelled", "cash_receipt.failed"]
    return events


def replay_issues_the_balance(
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
    *given: str,
    stdin: str = "",
) -> None:
    """The job is dead (an issue that failed); ``cashreceipt replay`` issues for 22000."""
    listed = lines(cli(redis_server, sandbox, "dead"))
    dead = [job for job in listed if job.get("imp_uid") == imp_uid]
    assert [(job["failed"], job["state"]) for job in dead] == [("issue", "failed")]
    replayed = cli(redis_server, sandbox, "replay", imp_uid, *given, stdin=stdin)
    assert replayed.returncode == 0, replayed.stderr
    (outcome,) = lines(replayed)
    reissued = results.wait(str(outcome["task_id"]))
    assert (reissued["type"], reissued["data"]["receipt"]["amount"]) == (
        "cash_receipt.issued",
        22000,
    )
    assert sandbox.admin.issued_count(imp_uid) == 2


def test_failed_reissue_after_a_partial_refund_is_replayable(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """The old receipt is cancelled, the new one refused: dead; replay issues for the balance."""
    refund_reissuing_nothing(
        producer,
        sandbox,
        results,
        imp_uid,
        lambda: sandbox.admin.script(
            imp_uid, *[{"kind": "reject", "message": "PG down", "method": "POST"}] * 3
        ),
    )
    replay_issues_the_balance(redis_server, sandbox, results, imp_uid)


def test_a_partial_refund_after_the_record_expired_is_dead_and_replayable_with_the_identifier(
    producer: Celery,
    redis_server: RedisServer,
    sandbox: Sandbox,
    results: ResultStream,
    imp_uid: str,
) -> None:
    """Issue 14, finding 9: past LEDGER_RETENTION the identifier is gone with the record.
    The refund cancels the receipt and says, in a failure event, that it re-issued nothing
    (no_payload); replay with the identifier issues the balance."""
    # What LEDGER_RETENTION does to the record before the refund comes.
    cancelled, failed = refund_reissuing_nothing(
        producer,
        sandbox,
        results,
        imp_uid,
        lambda: redis_server.client().delete(ledger_key(imp_uid)),
    )
    assert cancelled["data"]["receipt"]["amount"] == 33000
    assert failed["data"]["error"]["reason"] == "no_payload"
    replay_issues_the_balance(
        redis_server, sandbox, results, imp_uid, "--identifier-stdin", stdin="01055554321\n"
    )
