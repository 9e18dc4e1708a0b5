"""The ingress end to end: XADD → ``cashreceipt ingress`` → worker → sandbox → event.

Every test has a stream of its own (``INGRESS_STREAM``), on the session's
Redis, worker and sandbox; the dead-letter list is shared, so records are
picked out by stream.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import uuid
from typing import Any

import pytest
import redis
from celery import Celery
from cryptography.fernet import Fernet

from tests.support.hostile import LONE, deep_json, sent_for
from tests.support.ingress import INGRESS, blocked_reader, run_once, running_ingress, xadd
from tests.support.layout import dump
from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for
from tests.support.worker import ROOT, TEST_PII_KEY, ProcessOutput, worker_env
from worker.adapters.store.keys import DUE_KEY, ledger_key, payment_receipt_key
from worker.adapters.store.views import list_dead_entries
from worker.celery.producer import enqueue_issue
from worker.core.contract import CANCEL_TASK, ISSUE_TASK
from worker.ingress import task_id_for

pytestmark = pytest.mark.integration

GROUP = "cashreceipt-ingress"
PHONE = "01055554321"
CONFIRMED, CANCELLED = "payment.confirmed", "payment.cancelled"


@pytest.fixture
def stream() -> str:
    """An ingress stream nobody else uses."""
    return f"payment.events.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(redis_server: RedisServer, sandbox: Sandbox, stream: str) -> dict[str, str]:
    """The ingress's environment: the session's Redis and PII key, this test's stream."""
    return worker_env(redis_server.url, sandbox.url, INGRESS_STREAM=stream)


@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:
    """A plain client of the session's Redis, as a producer in any language has."""
    return redis_server.client()


def new_imp_uid() -> str:
    """A payment nobody has seen yet."""
    return f"imp_{uuid.uuid4().hex[:12]}"


def drained(client: redis.Redis, stream: str) -> bool:
    """Nothing left in the stream, and nothing pending in the group."""
    return client.xlen(stream) == 0 and client.xpending(stream, GROUP)["pending"] == 0


def dead_letters(client: redis.Redis, stream: str) -> dict[str, dict[str, Any]]:
    """This stream's dead letters, by entry id."""
    return {
        record["entry_id"]: record
        for record in list_dead_entries(client, 1000)
        if record["stream"] == stream
    }


def issued_originals(results: ResultStream, imp_uid: str) -> list[dict[str, Any]]:
    """The issued events of a payment that are not duplicates: exactly one when all is well."""
    return [
        event
        for event in results.for_imp_uid(imp_uid)
        if event["type"] == "cash_receipt.issued" and not event["data"]["duplicate"]
    ]


def test_confirmed_payment_is_issued_and_its_entry_deleted(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """XADD payment.confirmed: one receipt, one issued event, a ledger record, no entry left."""
    imp_uid = new_imp_uid()
    entry = xadd(
        client,
        stream,
        CONFIRMED,
        {"imp_uid": imp_uid, "merchant_uid": "order-7", "identifier": "010-5555-4321"},
    )
    code, log = run_once(env)
    assert code == 0, log
    task_id = task_id_for(stream, entry)
    event = results.wait(task_id)
    assert event["type"] == "cash_receipt.issued"
    assert (event["data"]["imp_uid"], event["data"]["merchant_uid"]) == (imp_uid, "order-7")
    assert drained(client, stream)
    record = client.hgetall(ledger_key(imp_uid))
    assert (record["state"], record["task_id"]) == ("issued", task_id)
    assert sandbox.admin.issued_count(imp_uid) == 1
    assert f"payment.confirmed enqueued as task {task_id}" in log
    assert PHONE not in log and "5555-4321" not in log


def test_sealed_identifier_is_opened_by_the_worker(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """A producer that seals the identifier with the PII key, as any Fernet library can."""
    imp_uid = new_imp_uid()
    sealed = Fernet(TEST_PII_KEY.encode()).encrypt(PHONE.encode()).decode()
    entry = xadd(
        client,
        stream,
        CONFIRMED,
        {"imp_uid": imp_uid, "identifier_sealed": sealed, "identifier_type": "phone"},
    )
    code, log = run_once(env)
    assert code == 0, log
    assert results.wait(task_id_for(stream, entry))["type"] == "cash_receipt.issued"
    posts = [r for r in sandbox.admin.requests(imp_uid) if r["method"] == "POST"]
    assert posts[0]["body"]["identifier"] == "010****4321"
    assert drained(client, stream)


def test_malformed_entries_are_dead_lettered_without_blocking(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    results: ResultStream,
) -> None:
    """Each malformed entry: a dead letter, a failure event if an imp_uid is readable; a valid
    entry behind them still goes through."""
    bad_identifier, bad_seal, unknown, bad_cancel, good = (new_imp_uid() for _ in range(5))
    cut_off, bad_bytes = new_imp_uid(), new_imp_uid()
    entries = {
        "bad_json": xadd(
            client, stream, CONFIRMED, f'{{"imp_uid": "{cut_off}", "identifier": "010-1234-5678"'
        ),
        "not_utf8": xadd(client, stream, CONFIRMED, b"\xff\xfe{}"),
        # Not UTF-8 only in a name: the imp_uid still reads (issue 14's review, finding 5).
        "utf8_imp_uid": xadd(
            client,
            stream,
            CONFIRMED,
            b'{"imp_uid": "%s", "buyer_name": "\xff", "identifier": "010-1234-5678"}'
            % bad_bytes.encode(),
        ),
        "not_object": xadd(client, stream, CONFIRMED, '["010-1234-5678"]'),
        "no_data": str(client.xadd(stream, {"type": CONFIRMED})),
        "no_imp_uid": xadd(client, stream, CONFIRMED, {"identifier": PHONE}),
        "bad_identifier": xadd(
            client, stream, CONFIRMED, {"imp_uid": bad_identifier, "identifier": "12"}
        ),
        "bad_seal": xadd(
            client, stream, CONFIRMED, {"imp_uid": bad_seal, "identifier_sealed": "gAAAAAB-nope"}
        ),
        "unknown_type": xadd(
            client,
            stream,
            "payment.refunded",
            {"imp_uid": unknown, "merchant_uid": "order-3", "identifier": PHONE},
        ),
        "bad_cancel": xadd(client, stream, CANCELLED, {"imp_uid": bad_cancel, "amount": "all"}),
    }
    valid = xadd(client, stream, CONFIRMED, {"imp_uid": good, "identifier": PHONE})
    code, log = run_once(env)
    assert code == 0, log

    assert results.wait(task_id_for(stream, valid))["type"] == "cash_receipt.issued"
    assert drained(client, stream)
    dead = dead_letters(client, stream)
    assert set(dead) == set(entries.values())
    reasons = {name: dead[entry]["reason"] for name, entry in entries.items()}
    assert reasons == {
        "bad_json": "invalid_json",
        "not_utf8": "invalid_json",
        "utf8_imp_uid": "invalid_json",
        "not_object": "invalid_payload",
        "no_data": "invalid_json",
        "no_imp_uid": "invalid_payload",
        "bad_identifier": "invalid_payload",
        "bad_seal": "payload_unreadable",
        "unknown_type": "unknown_type",
        "bad_cancel": "invalid_payload",
    }
    assert "imp_uid" in dead[entries["no_imp_uid"]]["errors"]
    assert dead[entries["unknown_type"]]["data"]["identifier"] == "010****4321"
    assert dead[entries["unknown_type"]]["type"] == "payment.refunded"
    # Text that is not JSON: nothing in it is known not to be personal, so only its size.
    assert dead[entries["bad_json"]]["data"].startswith("<redacted> (")

    # A failure event for each entry whose imp_uid can be read, under the entry's task id:
    # from data no parser reads whole too (cut off, not UTF-8).
    expected = {
        "bad_json": ("cash_receipt.failed", cut_off, "data"),
        "utf8_imp_uid": ("cash_receipt.failed", bad_bytes, "data"),
        "bad_identifier": ("cash_receipt.failed", bad_identifier, "identifier"),
        "bad_seal": ("cash_receipt.failed", bad_seal, "identifier_sealed"),
        "unknown_type": ("cash_receipt.failed", unknown, "type"),
        "bad_cancel": ("cash_receipt.cancel_failed", bad_cancel, "amount"),
    }
    for name, (event_type, imp_uid, field) in expected.items():
        event = results.wait(task_id_for(stream, entries[name]))
        assert (event["type"], event["data"]["imp_uid"]) == (event_type, imp_uid), name
        # A seal no key opens is the operator's to fix, not the producer's: its own reason.
        unreadable = name == "bad_seal"
        assert event["data"]["error"]["reason"] == (
            "payload_unreadable" if unreadable else "invalid_payload"
        ), name
        assert field in event["data"]["error"]["fields"], name
    assert results.for_imp_uid(unknown)[0]["data"]["merchant_uid"] == "order-3"
    for name in ("not_utf8", "not_object", "no_data", "no_imp_uid"):
        assert results.for_task(task_id_for(stream, entries[name])) == [], name

    shown = log + json.dumps(list(dead.values())) + json.dumps(results.all())
    assert PHONE not in shown and "010-1234-5678" not in shown


def test_unknown_fields_of_a_dead_letter_are_masked_everywhere_in_redis(
    own_redis: RedisServer, sandbox: Sandbox, stream: str
) -> None:
    """A misspelt or unknown field's value reaches no Redis key: its name is kept, its value
    masked, in the dead letter and the failure event (issue 14, finding 4)."""
    client = own_redis.client()
    env = worker_env(own_redis.url, sandbox.url, INGRESS_STREAM=stream)
    misspelt, unknown_type = new_imp_uid(), new_imp_uid()
    entries = {
        "misspelt": xadd(
            client, stream, CONFIRMED, {"imp_uid": misspelt, "identifer": "01012345678"}
        ),
        "unknown_type": xadd(
            client,
            stream,
            "payment.refunded",
            {
                "imp_uid": unknown_type,
                "identifier": PHONE,
                "customer_tel": "010-2345-6789",
                "buyer_phone": 1034567890,
                "extra": {"tel": "01045678901", "list": ["01056789012"]},
            },
        ),
        # Too big to keep whole even masked: its masked form is cut, never its raw text.
        "oversized": xadd(
            client,
            stream,
            CONFIRMED,
            {"customer_email": "hong@example.com", "merchant_uid": "m" * 70_000},
        ),
    }
    code, log = run_once(env)
    assert code == 0, log
    assert drained(client, stream)
    dead = dead_letters(client, stream)
    assert set(dead) == set(entries.values())
    shown = dead[entries["misspelt"]]["data"]
    assert shown["imp_uid"] == misspelt
    assert "identifer" in shown, "the misspelt name is what an operator needs to see"
    assert set(dead[entries["unknown_type"]]["data"]) >= {"customer_tel", "buyer_phone", "extra"}
    assert "identifier" in dead[entries["misspelt"]]["errors"]
    everything = json.dumps(dump(client), ensure_ascii=False)
    assert misspelt in everything and unknown_type in everything, "nothing was written"
    for digits in ("12345678", "23456789", "34567890", "45678901", "56789012", "55554321"):
        assert digits not in everything and digits not in log, digits
    assert "hong@example.com" not in everything and "hong@example.com" not in log


def test_cancellation_entry_cancels_the_receipt(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """payment.cancelled, after the payment's receipt was issued through the stream, cancels it."""
    imp_uid = new_imp_uid()
    sandbox.admin.seed_payment(imp_uid, pg_provider="kcp")
    with running_ingress(env, "--block-ms", "200"):
        issued = xadd(client, stream, CONFIRMED, {"imp_uid": imp_uid, "identifier": PHONE})
        assert results.wait(task_id_for(stream, issued))["type"] == "cash_receipt.issued"
        cancelled = xadd(client, stream, CANCELLED, {"imp_uid": imp_uid, "reason": "refund"})
        event = results.wait(task_id_for(stream, cancelled))
        wait_for(lambda: drained(client, stream), message="the stream to be drained")
    assert event["type"] == "cash_receipt.cancelled", event
    assert any(r["method"] == "DELETE" for r in sandbox.admin.requests(imp_uid))


def test_two_instances_share_the_group_and_handle_each_entry_once(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """Twenty entries between two running instances: each enqueued by exactly one of them."""
    imp_uids = [new_imp_uid() for _ in range(20)]
    with (
        running_ingress(env, "--consumer", "one", "--block-ms", "200") as (_, first),
        running_ingress(env, "--consumer", "two", "--block-ms", "200") as (_, second),
    ):
        # "ready" is logged before the first read. Once both wait inside XREADGROUP, Redis
        # hands the first two entries one to each; otherwise a fast first instance could
        # take all twenty, one by one, before the second reads at all.
        wait_for(
            lambda: blocked_reader(client, "one") and blocked_reader(client, "two"),
            message="both instances to wait for entries",
        )
        pipe = client.pipeline()
        for imp_uid in imp_uids:
            pipe.xadd(
                stream,
                {"type": CONFIRMED, "data": json.dumps({"imp_uid": imp_uid, "identifier": PHONE})},
            )
        entries = [str(entry) for entry in pipe.execute()]
        events = [results.wait(task_id_for(stream, entry)) for entry in entries]
        wait_for(lambda: drained(client, stream), message="the stream to be drained")

        def logged(entry: str) -> bool:
            line = f"enqueued as task {task_id_for(stream, entry)}"
            return line in first.text or line in second.text

        # The event can arrive before the instance's log line has been read from its pipe.
        wait_for(lambda: all(map(logged, entries)), message="every entry's log line")
    assert [event["data"]["imp_uid"] for event in events] == imp_uids
    assert all(sandbox.admin.issued_count(imp_uid) == 1 for imp_uid in imp_uids)
    # Both have exited; finish() reads what their pipes still held.
    logs = {"one": first.finish(), "two": second.finish()}
    handled = {
        name: [
            entry for entry in entries if f"enqueued as task {task_id_for(stream, entry)}" in log
        ]
        for name, log in logs.items()
    }
    assert sorted(handled["one"] + handled["two"]) == sorted(entries)
    assert handled["one"] and handled["two"], "one instance took every entry"


def test_sigkill_between_read_and_ack_is_taken_over_once(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """An ingress SIGKILLed holding a read entry: another instance takes it over, issues once,
    deletes it."""
    env = {**env, "INGRESS_CLAIM_IDLE": "0.5"}
    imp_uid = new_imp_uid()
    with running_ingress(env, "--consumer", "doomed", "--block-ms", "60000") as (doomed, _):
        # Stopped while it waits in XREADGROUP: Redis hands it the entry, it never handles it.
        wait_for(
            lambda: blocked_reader(client, "doomed"), message="the ingress to wait for entries"
        )
        os.kill(doomed.pid, signal.SIGSTOP)
        entry = xadd(client, stream, CONFIRMED, {"imp_uid": imp_uid, "identifier": PHONE})
        pending = wait_for(
            lambda: client.xpending_range(stream, GROUP, "-", "+", 10),
            message="the entry to be pending with the stopped ingress",
        )
        assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry, "doomed")]
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(timeout=10)
    task_id = task_id_for(stream, entry)
    assert results.for_task(task_id) == []
    assert not client.exists(ledger_key(imp_uid))

    with running_ingress(env, "--consumer", "heir", "--block-ms", "200") as (_, heir):
        event = results.wait(task_id)
        wait_for(lambda: drained(client, stream), message="the stream to be drained")
    assert event["type"] == "cash_receipt.issued"
    assert issued_originals(results, imp_uid) == [event]
    assert sandbox.admin.issued_count(imp_uid) == 1
    assert "took over 1 pending entries" in heir.text


def handled_after_a_crash_before_the_ack(
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    results: ResultStream,
    producer: Celery,
    imp_uid: str,
) -> tuple[str, dict[str, Any], str]:
    """An entry an ingress enqueued and died before acknowledging, whose task has ended,
    taken over and handled again: its task id, its first event, the takeover's log."""
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    entry = xadd(client, stream, CONFIRMED, {"imp_uid": imp_uid, "identifier": PHONE})
    task_id = task_id_for(stream, entry)
    # What an ingress that died just before its XACK had done: read, ledger, enqueue.
    client.xreadgroup(GROUP, "crashed", {stream: ">"}, count=1)
    enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer, task_id=task_id)
    first = results.wait(task_id)
    wait_for(
        lambda: client.xpending_range(stream, GROUP, "-", "+", 1, idle=100),
        message="the entry to be idle longer than INGRESS_CLAIM_IDLE",
    )
    code, log = run_once({**env, "INGRESS_CLAIM_IDLE": "0.1"})
    assert code == 0, log
    assert "took over 1 pending entries" in log
    return task_id, first, log


def test_entry_enqueued_but_not_acked_is_harmless_to_handle_again(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
    producer: Celery,
) -> None:
    """A crash after the enqueue and before the XACK: the takeover handles the entry again under
    the same task id, which adds no event and no receipt."""
    imp_uid = new_imp_uid()
    task_id, first, log = handled_after_a_crash_before_the_ack(
        env, client, stream, results, producer, imp_uid
    )
    assert f"enqueued as task {task_id}" in log
    assert drained(client, stream)
    assert results.for_task(task_id) == [first]
    assert issued_originals(results, imp_uid) == [first]
    assert sandbox.admin.issued_count(imp_uid) == 1


def test_an_entry_handled_again_after_its_job_failed_leaves_the_job_failed(
    worker: ProcessOutput,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
    producer: Celery,
) -> None:
    """Issue 14, finding 13: a crash before the XACK, after the job failed; the takeover
    handles the entry again under the same task id. That re-opened the job under a task
    that had ended: no message could claim it, the sweeper re-sent it for ever, and once
    the marker expired it POSTed again. Now the entry adds nothing: the job stays failed,
    nothing is due, one event, one POST."""
    imp_uid = new_imp_uid()
    sandbox.admin.seed_payment(imp_uid, pg_provider="payco")  # 501: fails at once
    task_id, first, _ = handled_after_a_crash_before_the_ack(
        env, client, stream, results, producer, imp_uid
    )
    assert first["data"]["error"]["reason"] == "unsupported_pg"
    assert drained(client, stream)
    record = client.hgetall(ledger_key(imp_uid))
    assert (record["state"], record["task_id"]) == ("failed", task_id)
    assert client.zscore(DUE_KEY, payment_receipt_key(imp_uid)) is None
    assert results.for_task(task_id) == [first]
    posts = [r for r in sandbox.admin.requests(imp_uid) if r["method"] == "POST"]
    assert len(posts) == 1


def test_sigterm_finishes_and_exits_zero(env: dict[str, str]) -> None:
    """SIGTERM while waiting for entries: a clean exit 0, within the read's block time."""
    with running_ingress(env, "--block-ms", "500") as (process, output):
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    assert "ingress stopped" in output.finish()


@pytest.mark.redis_broker  # reads the queued messages off the Redis broker's list
def test_entry_stays_pending_while_redis_refuses_writes(
    own_redis: RedisServer, sandbox: Sandbox, stream: str
) -> None:
    """The ledger write fails (Redis out of memory): nothing is acked; once Redis takes writes
    again the same entries are enqueued, an issue and a cancellation."""
    client = own_redis.client()
    env = worker_env(own_redis.url, sandbox.url, INGRESS_STREAM=stream)
    imp_uid = new_imp_uid()
    try:
        with running_ingress(env, "--block-ms", "500") as (_, output):
            # Reads still work out of memory (XREADGROUP is not refused); the ledger's write is.
            pipe = client.pipeline(transaction=True)
            pipe.xadd(
                stream,
                {"type": CONFIRMED, "data": json.dumps({"imp_uid": imp_uid, "identifier": PHONE})},
            )
            pipe.xadd(
                stream,
                {"type": CANCELLED, "data": json.dumps({"imp_uid": imp_uid, "amount": 1000})},
            )
            pipe.config_set("maxmemory", 1)
            confirmed, cancelled = (str(entry) for entry in pipe.execute()[:2])
            wait_for(lambda: "Redis or the broker failed" in output.text, message="a refused write")
            assert client.xpending(stream, GROUP)["pending"] == 1
            assert client.xlen(stream) == 2
            assert not client.exists(ledger_key(imp_uid))
            client.config_set("maxmemory", 0)
            wait_for(lambda: drained(client, stream), message="the entries to be enqueued")
    finally:
        client.config_set("maxmemory", 0)
    assert "OutOfMemoryError" in output.text
    assert client.hget(ledger_key(imp_uid), "task_id") == task_id_for(stream, confirmed)
    queued = [json.loads(message) for message in client.lrange("cash_receipts", 0, -1)]
    sent = {(m["headers"]["task"], m["headers"]["id"]) for m in queued}
    assert sent == {
        (ISSUE_TASK, task_id_for(stream, confirmed)),
        (CANCEL_TASK, task_id_for(stream, cancelled)),
    }


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"INGRESS_CLAIM_IDLE": "soon"}, "INGRESS_CLAIM_IDLE must be a number"),
        ({"INGRESS_STREAM": "cash_receipt.events"}, "INGRESS_STREAM and RESULT_STREAM"),
        ({"PII_ENCRYPTION_KEYS": ""}, "configuration error: no PII encryption key"),
    ],
)
def test_refuses_to_start_misconfigured(
    env: dict[str, str], setting: dict[str, str], message: str
) -> None:
    """A bad setting or no PII key stops the ingress at start, with one line naming it."""
    code, log = run_once({**env, **setting}, timeout=20)
    assert code != 0
    assert message in log
    assert "Traceback" not in log


def test_help_lists_the_options() -> None:
    """``--consumer``, ``--once`` and ``--block-ms`` are the options ``cashreceipt ingress`` has."""
    result = subprocess.run(
        [*INGRESS, "--help"], capture_output=True, text=True, check=False, timeout=20, cwd=ROOT
    )
    assert result.returncode == 0
    assert all(option in result.stdout for option in ("--consumer", "--once", "--block-ms"))


def readme_block(marker: str, language: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- {marker} -->\n```{language}\n(.*?)```", text, re.DOTALL)
    assert found, f"README has no {marker} block"
    return found.group(1)


def test_readme_python_producer_reaches_the_worker(
    worker: ProcessOutput,
    redis_server: RedisServer,
    sandbox: Sandbox,
    client: redis.Redis,
    results: ResultStream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's Python producer, as written, on the default stream: issued."""
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("PII_ENCRYPTION_KEYS", TEST_PII_KEY)
    namespace: dict[str, Any] = {"__name__": "readme_producer"}
    exec(readme_block("ingress-producer-example", "python"), namespace)  # noqa: S102
    imp_uid = new_imp_uid()
    entry = namespace["payment_confirmed"](imp_uid, "order-1", "010-5555-4321")
    code, log = run_once(worker_env(redis_server.url, sandbox.url))
    assert code == 0, log
    event = results.wait(task_id_for("payment.events", entry))
    assert (event["type"], event["data"]["imp_uid"]) == ("cash_receipt.issued", imp_uid)
    assert drained(client, "payment.events")


def test_readme_redis_cli_lines_are_accepted(
    worker: ProcessOutput,
    redis_server: RedisServer,
    env: dict[str, str],
    client: redis.Redis,
    stream: str,
    sandbox: Sandbox,
    results: ResultStream,
) -> None:
    """The README's redis-cli lines, with a real token and this test's payment: issued, then
    cancelled."""
    imp_uid = new_imp_uid()
    sandbox.admin.seed_payment(imp_uid, pg_provider="kcp", amount=11000)
    sealed = Fernet(TEST_PII_KEY.encode()).encrypt(PHONE.encode()).decode()
    commands = []
    for line in readme_block("ingress-redis-cli", "sh").splitlines():
        arguments = shlex.split(line.replace("gAAAAABn…", sealed).replace("imp_123", imp_uid))
        assert arguments[:3] == ["redis-cli", "XADD", "payment.events"]
        # As a producer logs in: the ACL user (docker/redis/users.acl) may XADD.
        login = ["-u", redis_server.url, "--no-auth-warning"]
        commands.append(["redis-cli", *login, "XADD", stream, *arguments[3:]])

    def redis_cli(command: list[str]) -> str:
        """Run one README line; returns the entry id it printed."""
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()

    with running_ingress(env, "--block-ms", "200"):
        # One after the other: a cancellation racing its own issue is another matter.
        issued = results.wait(task_id_for(stream, redis_cli(commands[0])))
        refund_task = task_id_for(stream, redis_cli(commands[1]))
        # A partial refund: the receipt is cancelled and one re-issued for the rest.
        refund = wait_for(
            lambda: len(results.for_task(refund_task)) == 2,
            message="the refund's two events",
        )
    assert issued["type"] == "cash_receipt.issued"
    assert refund
    assert [event["type"] for event in results.for_task(refund_task)] == [
        "cash_receipt.cancelled",
        "cash_receipt.issued",
    ]


def handled_around(
    env: dict[str, str], client: redis.Redis, stream: str, results: ResultStream, valid: str
) -> dict[str, dict[str, Any]]:
    """Run the ingress once: the valid entry behind the bad ones is issued, the stream is
    drained; the stream's dead letters."""
    code, log = run_once(env)
    assert code == 0, log
    assert results.wait(task_id_for(stream, valid))["type"] == "cash_receipt.issued"
    assert drained(client, stream)
    return dead_letters(client, stream)


@pytest.mark.usefixtures("worker")
def test_lone_surrogate_in_an_ingress_entry_is_dead_lettered_with_one_event(
    client: redis.Redis,
    env: dict[str, str],
    stream: str,
    results: ResultStream,
    sandbox: Sandbox,
) -> None:
    """Confirmed and cancelled entries with a lone surrogate: a dead letter each, an event when
    the imp_uid is readable, no POST; the entry behind them still goes through."""
    bad_merchant, bad_name, bad_cancel, good = (new_imp_uid() for _ in range(4))
    entries = {
        "merchant_uid": xadd(
            client,
            stream,
            CONFIRMED,
            {"imp_uid": bad_merchant, "merchant_uid": f"o{LONE}", "identifier": PHONE},
        ),
        "buyer_name": xadd(
            client,
            stream,
            CONFIRMED,
            {"imp_uid": bad_name, "identifier": PHONE, "buyer_name": f"Kim{LONE}"},
        ),
        "imp_uid": xadd(client, stream, CONFIRMED, {"imp_uid": f"imp_{LONE}", "identifier": PHONE}),
        "reason": xadd(client, stream, CANCELLED, {"imp_uid": bad_cancel, "reason": f"r{LONE}"}),
    }
    valid = xadd(client, stream, CONFIRMED, {"imp_uid": good, "identifier": PHONE})
    dead = handled_around(env, client, stream, results, valid)
    assert set(dead) == set(entries.values())
    assert {record["reason"] for record in dead.values()} == {"invalid_payload"}
    for field, entry in entries.items():
        assert field in dead[entry]["errors"], field
    for imp_uid, field in ((bad_merchant, "merchant_uid"), (bad_name, "buyer_name")):
        (event,) = results.for_imp_uid(imp_uid)
        assert event["type"] == "cash_receipt.failed"
        assert field in event["data"]["error"]["fields"]
        assert sent_for(sandbox, imp_uid) == []
    (cancel_event,) = results.for_imp_uid(bad_cancel)
    assert cancel_event["type"] == "cash_receipt.cancel_failed"
    assert results.for_task(task_id_for(stream, entries["imp_uid"])) == []
    assert LONE not in json.dumps([*dead.values(), *results.all()], ensure_ascii=False)


@pytest.mark.usefixtures("worker")
def test_deeply_nested_ingress_entry_is_dead_lettered(
    client: redis.Redis, env: dict[str, str], stream: str, results: ResultStream
) -> None:
    """JSON nested 100,000 deep: a dead letter that says so, and the next entry goes through.
    Nested inside a payload whose imp_uid reads, it ends in that payment's failure event too."""
    deep = xadd(client, stream, CONFIRMED, deep_json())
    nested = new_imp_uid()
    inside = xadd(
        client,
        stream,
        CONFIRMED,
        b'{"imp_uid": "%s", "identifier": ' % nested.encode() + deep_json() + b"}",
    )
    good = new_imp_uid()
    valid = xadd(client, stream, CONFIRMED, {"imp_uid": good, "identifier": PHONE})
    dead = handled_around(env, client, stream, results, valid)
    assert set(dead) == {deep, inside}
    for record in dead.values():
        assert record["reason"] == "invalid_json"
        assert "nested too deeply" in record["errors"]["data"][0]
    (event,) = results.for_imp_uid(nested)
    assert event["type"] == "cash_receipt.failed"
    assert event["data"]["task_id"] == task_id_for(stream, inside)
    assert list(event["data"]["error"]["fields"]) == ["data"]
    assert results.for_task(task_id_for(stream, deep)) == []
