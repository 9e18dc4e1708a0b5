"""The whole path with real parts: producer → Redis → worker process → sandbox → result event."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.spec import RECEIPT_FIELDS
from tests.support.worker import ProcessOutput, producer_app, running_worker, worker_env
from worker.celery.producer import enqueue_issue
from worker.core.schemas import InvalidPayload

pytestmark = pytest.mark.integration

PHONE = "01055554321"


def send(producer: Celery, payload: Any, **options: Any) -> str:
    """Enqueue exactly as the contract tells a producer in any language to."""
    result = producer.send_task(
        "issue_cash_receipt", args=[payload], queue="cash_receipts", **options
    )
    return str(result.id)


def posts(sandbox: Sandbox, imp_uid: str) -> list[dict[str, Any]]:
    """The POST /receipts requests the sandbox saw for one payment."""
    return [r for r in sandbox.admin.requests(imp_uid) if r["method"] == "POST"]


@pytest.mark.usefixtures("worker")
class TestIssued:
    """Receipts that end issued."""

    def test_happy_path(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """One payload, one POST, one issued event carrying the whole ReceiptAnnotation."""
        task_id = send(
            producer, {"imp_uid": imp_uid, "merchant_uid": "order-9", "identifier": PHONE}
        )
        event = results.wait(task_id)
        assert {key: event["data"][key] for key in ("receipt_key", "provider", "kind")} == {
            "receipt_key": f"iamport:{imp_uid}",
            "provider": "iamport",
            "kind": "payment",
        }
        assert event["type"] == "cash_receipt.issued"
        data = event["data"]
        assert set(data) >= {"event_id", "occurred_at", "imp_uid", "merchant_uid", "task_id"}
        assert (data["imp_uid"], data["merchant_uid"], data["attempts"]) == (imp_uid, "order-9", 1)
        assert data["duplicate"] is False
        assert data["occurred_at"].endswith("Z")
        assert set(data["receipt"]) == RECEIPT_FIELDS
        assert (data["receipt"]["amount"], data["receipt"]["vat"]) == (11000, 1000)
        assert sandbox.admin.issued_count(imp_uid) == 1
        assert PHONE not in str(results.all())

    def test_python_helper_validates_then_enqueues(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """The helper refuses a bad payload in the caller and sends a normalised good one."""
        with pytest.raises(InvalidPayload) as caught:
            enqueue_issue({"imp_uid": imp_uid, "identifier": "12"}, app=producer)
        assert "identifier" in caught.value.errors
        task_id = enqueue_issue(
            {"imp_uid": imp_uid, "identifier": "010-5555-4321", "note": "dropped"}, app=producer
        )
        assert results.wait(task_id)["type"] == "cash_receipt.issued"
        body = posts(sandbox, imp_uid)[0]["body"]
        assert "note" not in body
        assert body["identifier"] == "010****4321"

    def test_every_spec_field_reaches_iamport(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """Daou needs company fields, KSNET ``product_type``; they and the rest are passed
        through. ``provider`` and ``kind`` name the job and are not sent (issue 15)."""
        sandbox.admin.seed_payment(imp_uid, pg_provider="daou")
        payload = {
            "provider": "iamport",
            "kind": "payment",
            "imp_uid": imp_uid,
            "identifier": "1168200276",
            "identifier_type": "business",
            "type": "company",
            "company_tel": "0212345678",
            "company_name": "Shop",
            "corp_reg_no": "1168200276",
            "buyer_name": "Kim",
            "buyer_email": "kim@example.com",
            "buyer_tel": "01011112222",
            "tax_free": 1100,
            "vat_amount": 900,
            "product_type": "digital",
        }
        event = results.wait(send(producer, payload))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["receipt"]["vat"] == 900
        body = posts(sandbox, imp_uid)[0]["body"]
        assert set(body) == set(payload) - {"imp_uid", "provider", "kind"}
        assert (body["product_type"], body["vat_amount"]) == ("digital", 900)

    def test_partial_cancel_is_issued_for_the_balance(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """i'mport computes the amount; the event carries what it issued."""
        sandbox.admin.seed_payment(imp_uid, amount=33000, cancel_amount=11000)
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["data"]["receipt"]["amount"] == 22000

    def test_already_issued_elsewhere_is_a_duplicate_not_a_failure(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A 400 "already issued" is looked up and reported as issued, duplicate, no new receipt."""
        first = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        second = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert (first["data"]["duplicate"], second["data"]["duplicate"]) == (False, True)
        assert second["type"] == "cash_receipt.issued"
        assert second["data"]["receipt"]["apply_num"] == first["data"]["receipt"]["apply_num"]
        assert sandbox.admin.issued_count(imp_uid) == 1

    @pytest.mark.parametrize(
        "step",
        [
            {"kind": "status", "status": 502},
            {"kind": "status", "status": 503},
            {"kind": "status", "status": 504},
            # A gateway's HTML page instead of i'mport's JSON: even with a 2xx it is no answer.
            {"kind": "garbage", "status": 502},
            {"kind": "garbage", "status": 200},
            # "Not now" without i'mport's envelope: once final failures (unexpected_response).
            {"kind": "answer", "status": 408, "body_kind": "empty"},
            {"kind": "answer", "status": 429, "body_kind": "empty", "retry_after": "0.1"},
            {"kind": "answer", "status": 503, "body_kind": "json"},
            # ... and i'mport's own 408 or 425, once read as a rejection.
            {"kind": "answer", "status": 408, "body_kind": "envelope"},
            {"kind": "answer", "status": 425, "body_kind": "envelope"},
        ],
        ids=[
            "502",
            "503",
            "504",
            "html-502",
            "html-200",
            "bare-408",
            "bare-429-retry-after",
            "json-503",
            "json-408",
            "json-425",
        ],
    )
    def test_gateway_errors_are_retried_to_success(
        self,
        producer: Celery,
        sandbox: Sandbox,
        results: ResultStream,
        imp_uid: str,
        step: dict[str, Any],
    ) -> None:
        """A transient answer is retried with backoff, with a lookup before the one re-POST."""
        sandbox.admin.script(imp_uid, {**step, "method": "POST"})
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["attempts"] == 2
        methods = [(r["method"], r["status"]) for r in sandbox.admin.requests(imp_uid)]
        assert methods[0] == ("POST", step["status"])
        assert methods[1][0] == "GET"
        assert methods[-1] == ("POST", 200)
        assert sandbox.admin.issued_count(imp_uid) == 1

    def test_rate_limit_waits_for_retry_after(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A 429 is retried on a countdown (its Retry-After is within RETRY_BACKOFF_MAX)."""
        sandbox.admin.script(imp_uid, {"kind": "rate_limit", "retry_after": 0.1, "method": "POST"})
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["attempts"] == 2

    @pytest.mark.parametrize("kind", ["drop_before", "hang"])
    def test_lost_requests_are_retried(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str, kind: str
    ) -> None:
        """A dropped connection or a hang past the timeout ends issued, exactly once."""
        sandbox.admin.script(imp_uid, {"kind": kind, "seconds": 5, "method": "POST"})
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"
        assert sandbox.admin.issued_count(imp_uid) == 1

    def test_ambiguous_drop_after_create_is_settled_by_lookup(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """The receipt was created but the answer lost: the lookup finds it; no second POST."""
        sandbox.admin.script(imp_uid, {"kind": "drop_after", "method": "POST"})
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["duplicate"] is False
        assert event["data"]["receipt"]["apply_num"]
        assert len(posts(sandbox, imp_uid)) == 1
        assert sandbox.admin.issued_count(imp_uid) == 1

    def test_lookup_answered_500_in_the_envelope_is_retried(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A lookup's 500 is i'mport failing to look, not "issuance failed": the job ends with
        the receipt its lost POST created. (Read as issuance failed, three such lookups ended
        it `rejected` with that receipt live.)"""
        lookup_fails = {"kind": "answer", "status": 500, "body_kind": "envelope", "method": "GET"}
        sandbox.admin.script(imp_uid, {"kind": "drop_after", "method": "POST"}, *[lookup_fails] * 3)
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued", event["data"].get("error")
        assert len(posts(sandbox, imp_uid)) == 1
        assert sandbox.admin.issued_count(imp_uid) == 1

    def test_pg_without_lookup_is_settled_through_the_payment(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """KICC receipts cannot be looked up: cash_receipt_issued settles the ambiguity."""
        sandbox.admin.seed_payment(imp_uid, pg_provider="kicc")
        sandbox.admin.script(imp_uid, {"kind": "drop_after", "method": "POST"})
        payload = {"imp_uid": imp_uid, "identifier": PHONE, "identifier_type": "phone"}
        event = results.wait(send(producer, payload))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["receipt"]["amount"] == 11000
        assert len(posts(sandbox, imp_uid)) == 1
        assert any(r["path"].startswith("/payments/") for r in sandbox.admin.requests(imp_uid))

    def test_token_revoked_in_the_middle_is_renewed_once(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A 401 on a cached token renews it and resends, in the same attempt."""
        sandbox.admin.script(imp_uid, {"kind": "revoke_tokens", "method": "POST"})
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"
        assert event["data"]["attempts"] == 1
        assert [r["status"] for r in posts(sandbox, imp_uid)] == [401, 200]

    def test_expired_token_is_renewed(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """Every token revoked between two receipts: the second still succeeds."""
        assert results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        sandbox.admin.revoke_tokens()
        second = f"{imp_uid}_2"
        event = results.wait(send(producer, {"imp_uid": second, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.issued"


def test_retry_after_beyond_the_backoff_cap_is_honoured_whole(
    own_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """A Retry-After longer than RETRY_BACKOFF_MAX (0.2 s here) is not cut to it: no request
    for the job before it has passed. A countdown that long would outlast what the visibility
    timeout allows for, so the job is parked in the ledger; the sweeper runs every 0.2 s, so a
    wait cut to the cap would show."""
    sandbox.admin.script(imp_uid, {"kind": "rate_limit", "retry_after": 1.5, "method": "POST"})
    env = worker_env(own_redis.url, sandbox.url, SWEEP_INTERVAL="0.2")
    with running_worker(env) as output:
        task_id = send(producer_app(own_redis.url), {"imp_uid": imp_uid, "identifier": PHONE})
        event = ResultStream(own_redis.client()).wait(task_id, timeout=30)
        log = output.text
    assert event["type"] == "cash_receipt.issued"
    assert event["data"]["attempts"] == 2
    seen = sandbox.admin.requests(imp_uid)
    refused = next(r for r in seen if r["method"] == "POST" and r["status"] == 429)
    later = [r for r in seen if r["at"] > refused["at"]]
    assert later, seen
    assert later[0]["at"] >= refused["at"] + 1.5 - 0.05, (refused, later[0])
    assert "attempt 1: parked (rate_limited)" in log, log
    assert sandbox.admin.issued_count(imp_uid) == 1


@pytest.mark.usefixtures("worker")
class TestFailed:
    """Receipts that end in exactly one failure event."""

    def test_invalid_payload_fails_at_once_without_calling_iamport(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """Field errors in plain words, no API call, no retry, identifier not echoed."""
        payload = {"imp_uid": imp_uid, "identifier": "010-5555-432x", "tax_free": -1}
        event = results.wait(send(producer, payload))
        assert event["type"] == "cash_receipt.failed"
        error = event["data"]["error"]
        assert error["reason"] == "invalid_payload"
        assert error["retryable"] is False
        assert set(error["fields"]) == {"identifier", "tax_free"}
        assert event["data"]["attempts"] == 1
        assert sandbox.admin.requests(imp_uid) == []
        assert "5555" not in str(event)

    def test_tax_service_rejection_carries_the_provider_message(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A 500 is retried a few times, each re-POST after a lookup, then fails with its words."""
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": "12345678901"}))
        assert event["type"] == "cash_receipt.failed"
        error = event["data"]["error"]
        assert (error["reason"], error["status"], error["retryable"]) == ("rejected", 500, False)
        assert "TS1" in error["message"]
        assert event["data"]["attempts"] == 3
        sequence = [(r["method"], r["path"].split("/")[1]) for r in sandbox.admin.requests(imp_uid)]
        post_at = [i for i, step in enumerate(sequence) if step == ("POST", "receipts")]
        assert len(post_at) == 3
        for index in post_at[1:]:
            assert sequence[index - 2 : index] == [("GET", "receipts"), ("GET", "payments")]

    def test_pg_rejection_message_is_passed_on(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """The PG's own wording reaches the failure event."""
        steps = [{"kind": "reject", "message": "PG: 발급 불가 카드", "method": "POST"}] * 3
        sandbox.admin.script(imp_uid, *steps)
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["data"]["error"]["message"] == "PG: 발급 불가 카드"
        assert event["data"]["error"]["reason"] == "rejected"

    def test_success_without_a_receipt_is_an_unexpected_response(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """code 0 with no ReceiptAnnotation: a broken i'mport, for a human; never retried."""
        envelope = '{"code": 0, "message": null, "response": null}'
        sandbox.admin.script(
            imp_uid, {"kind": "garbage", "status": 200, "body": envelope, "method": "POST"}
        )
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.failed"
        error = event["data"]["error"]
        assert (error["reason"], error["status"], error["retryable"]) == (
            "unexpected_response",
            200,
            False,
        )
        assert len(posts(sandbox, imp_uid)) == 1

    def test_unsupported_pg(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """501 fails at once as unsupported_pg."""
        sandbox.admin.seed_payment(imp_uid, pg_provider="payco")
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        error = event["data"]["error"]
        assert (error["reason"], error["status"], event["data"]["attempts"]) == (
            "unsupported_pg",
            501,
            1,
        )

    @pytest.mark.parametrize(
        "payment", [{"status": "ready"}, {"pay_method": "card"}, {"status": "cancelled"}]
    )
    def test_payment_not_eligible(
        self,
        producer: Celery,
        sandbox: Sandbox,
        results: ResultStream,
        imp_uid: str,
        payment: dict[str, str],
    ) -> None:
        """A 400 with no receipt behind it, on an unpaid or non-cash payment, fails at once."""
        sandbox.admin.seed_payment(imp_uid, **payment)
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        assert event["type"] == "cash_receipt.failed"
        assert event["data"]["error"]["reason"] == "not_eligible"
        assert event["data"]["error"]["status"] == 400
        assert len(posts(sandbox, imp_uid)) == 1

    def test_missing_pg_field_is_rejected(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """KICC without identifier_type: a permanent 400, failed as rejected."""
        sandbox.admin.seed_payment(imp_uid, pg_provider="kicc")
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        error = event["data"]["error"]
        assert (error["reason"], error["status"], error["retryable"]) == ("rejected", 400, False)

    def test_outage_exhausts_the_retry_budget(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """Five 503s in a row (RETRY_MAX_ATTEMPTS=5) end in retries_exhausted, still retryable."""
        sandbox.admin.script(imp_uid, *[{"kind": "status", "status": 503}] * 30)
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": PHONE}))
        error = event["data"]["error"]
        assert (error["reason"], error["status"], error["retryable"]) == (
            "retries_exhausted",
            503,
            True,
        )
        assert event["data"]["attempts"] == 5
        assert sandbox.admin.issued_count(imp_uid) == 0


@pytest.mark.usefixtures("worker")
class TestGarbage:
    """Messages that are not payloads still end in one event and never stop the worker."""

    @pytest.mark.parametrize(
        ("args", "kwargs"),
        [([], {}), (["not an object"], {}), ([None], {}), ([1, 2], {}), ([], {"x": 1})],
    )
    def test_wrong_arguments_fail_with_an_event(
        self, producer: Celery, results: ResultStream, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        """No payload, a non-object payload or extra arguments: one invalid_payload event."""
        task_id = str(
            producer.send_task(
                "issue_cash_receipt", args=args, kwargs=kwargs, queue="cash_receipts"
            ).id
        )
        event = results.wait(task_id)
        assert event["data"]["error"]["reason"] == "invalid_payload"
        assert event["data"]["imp_uid"] is None

    def test_bad_payload_with_readable_imp_uid_names_it(
        self, producer: Celery, results: ResultStream, imp_uid: str
    ) -> None:
        """When an imp_uid can be read, the failure event carries it."""
        event = results.wait(send(producer, {"imp_uid": imp_uid, "identifier": None}))
        assert event["data"]["imp_uid"] == imp_uid

    def test_same_task_id_twice_publishes_once(
        self, producer: Celery, sandbox: Sandbox, results: ResultStream, imp_uid: str
    ) -> None:
        """A redelivered message (same task id) ends in the one event already published."""
        payload = {"imp_uid": imp_uid, "identifier": PHONE}
        task_id = send(producer, payload)
        results.wait(task_id)
        send(producer, payload, task_id=task_id)
        marker = send(producer, {"imp_uid": f"{imp_uid}_after", "identifier": PHONE})
        results.wait(marker)
        assert len(results.for_task(task_id)) == 1
        assert sandbox.admin.issued_count(imp_uid) == 1


def test_worker_log_never_shows_the_identifier(worker: ProcessOutput) -> None:
    """After every test above, the worker's log holds no raw identifier."""
    assert PHONE not in worker.text
    assert "12345678901" not in worker.text
