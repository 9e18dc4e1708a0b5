"""The chaos suite: exactly once, whatever fails.

Payment events, V1 external receipts' confirmations (issue 15: cash taken outside
i'mport, named by its merchant_uid) and PortOne V2 receipts (issue 16: ``provider:
portone``, a PortOne payment's or cash taken outside, named by its paymentId), each with
duplicates, go through the Python helper to workers that serve both providers while the
sandbox fails a fifth of its answers, drops connections after creating receipts, adds
latency, and for some payments, sales and V2 receipts answers a POST only after the
client's timeout, having created the receipt; some payments are partly refunded once
issued (cancel, then re-issue for the rest: V1 external receipts have no refunds here),
some V2 receipts refunded in full (V2's cancel), and some V2 receipts of each kind refunded in
part three times (the first refund, a second, the first again: a duplicate), the sandbox
allowing a re-issue under the paymentId, a PortOne payment re-seeded PARTIAL_CANCELLED before
each refund is sent (and before the first's re-issue may be sent again), faults scripted on
their cancels and re-issues; workers are SIGKILLed at random points and replaced; Redis is
killed and restarted once (AOF, fsync always).

The sandbox keeps a V2 Idempotency-Key only half a second (``KEY_RETENTION``), less than
the workers' settle bound: the key of a V2 POST whose answer was lost or late has expired
when its job's retry comes, and the same key would issue again. The retry must look
before it POSTs, not rely on the key.

The sandbox runs with duplicates allowed, so a second POST would be a second
receipt rather than a harmless "already issued", and it counts blind requests
(docs/sandbox.md), for payments, external receipts and V2 apart (V2's blind POSTs include
a retry under a new key after an unanswered POST, with no lookup since). The fleet keeps
running for a lease and two sweeps past the last first event, so a late duplicate
has time to show. Then: never two active receipts for a payment, a merchant_uid or a
paymentId, receipts created = 1 + the re-issues the ledger recorded for a payment and 1
for a sale or a V2 receipt (1 + re-issues for one refunded in part), the first for the amount
asked and one live unless refunded in full, for what the refunds left (the sandbox's audit and
receipts), no V2 Idempotency-Key sent with two requests (the request log), a repeated refund a
duplicate, no blind request, exactly one terminal transition per task
message, 1 + re-issues non-duplicate issued events per payment and one per sale and V2
receipt, every task message of a sale or V2 receipt never refunded naming the one receipt
the sandbox holds for it, every ledger record terminal, ``cashreceipt stuck`` empty and
``cashreceipt reconcile`` clean for every job, some V2 key expired before its job looked again, and
no worker stopped on its own (a Redis restart once stopped every worker holding messages).

CI runs the short profile (300 payments, 60 sales, 60 V2 receipts); ``pytest tests/chaos
--chaos-long`` runs 10,000 payments, 2,000 sales and 2,000 V2 receipts, with the same
assertions.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from tests.support.payloads import external_payload, portone_payload
from tests.support.redis_server import RedisServer
from tests.support.sandbox import Sandbox, SandboxAdmin, running_sandbox
from tests.support.wait import WaitTimeout, wait_for
from tests.support.worker import BIN, BOTH_PROVIDERS, ROOT, TEST_PII_KEY, portone_env
from worker.adapters.store.keys import record_key
from worker.adapters.store.views import TERMINAL_STATES, job_history
from worker.celery.producer import enqueue_cancel, enqueue_issue
from worker.core.contract import EXTERNAL, PAYMENT, PORTONE
from worker.core.types import JobKey

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

FAULTS = (
    "--fault-rate", "status_502=0.07",
    "--fault-rate", "status_503=0.07",
    "--fault-rate", "status_504=0.06",
    "--fault-rate", "drop_after=0.05",
    "--latency-jitter-ms", "60",
    "--seed", "20261124",
)  # fmt: skip
#: The worker's read timeout here (IAMPORT_TIMEOUT). For a share of the payments
#: the first POST is processed only after it (a latency spike: the sandbox does
#: the work after the delay and answers a client that gave up): before the
#: retry looks, between its lookup and its POST, or after its POST.
IAMPORT_TIMEOUT = 0.25
LATE_POST_MS = (260, 900)
LATE_POST_SHARE = 0.05
#: The worker's IAMPORT_SETTLE_SECONDS, and the sandbox's limit on how late it acts on a
#: request (--late-limit-seconds): the late POSTs above stay within it, so each is settled by
#: a lookup made after i'mport acted. Beyond it, the guarantee ends (README).
SETTLE_SECONDS = 1.0
#: A share of the payments is partly refunded once issued: the receipt is
#: cancelled (DELETE) and re-issued for the rest (POST), under the same faults.
REFUND_SHARE = 0.05
REFUND_AMOUNT = 1000
#: What the external sales are for: each merchant_uid one of these, its duplicates the same.
SALE_AMOUNTS = (5000, 11000, 33000)
#: How long the sandbox keeps a PortOne V2 Idempotency-Key (--idempotency-retention), from its
#: first request: shorter than the worker's settle bound, so the key of every V2 POST whose
#: answer was lost, or came after the timeout, has expired by the time its job's retry acts.
#: The same key again would then issue a second receipt: the retry must look, not rely on it.
KEY_RETENTION = 0.5
#: A share of the V2 receipts is refunded in full once issued: V2's cancel, with its own key.
V2_REFUND_SHARE = 0.1
#: The share of V2 receipts whose first POST is processed after the timeout (LATE_POST_MS): more
#: than V1's, since each is a key that expires before its job's retry.
V2_LATE_SHARE = 0.2
#: A share of each kind of V2 receipt (none of those refunded in full) is refunded in part, three
#: times: the first refund (V2_PARTIAL_REFUNDS[0]) once issued; the second once the first's
#: re-issue was sent (PortOne's payment moving while that re-issue may be sent again); the first
#: again once both ended, an outbox relay's repeat (a duplicate). The sandbox allows a re-issue
#: under a paymentId whose receipt was cancelled. A payment's refund names the refunded amount
#: (PortOne's payment is re-seeded PARTIAL_CANCELLED first), an external one's what is left.
V2_PARTIAL_SHARE = 0.2
V2_PARTIAL_REFUNDS = (1000, 2000)
#: Faults scripted on a partly refunded V2 receipt's first cancel and first re-issue POST, in
#: turn: no answer, nothing done (the same key sent again, with the same body, after a lookup);
#: or done with the answer lost (settled by a lookup).
V2_REFUND_FAULTS = (
    ({"kind": "status", "status": 503}, {"kind": "hang", "seconds": 1}),
    ({"kind": "drop_after"}, {"kind": "drop_before"}),
)
CANCEL_EVENTS = frozenset({"cash_receipt.cancelled", "cash_receipt.cancel_failed"})


@dataclass
class Profile:
    """How much chaos."""

    payments: int
    #: V1 external receipts, each its own merchant_uid (issue 15); duplicated as payments are.
    sales: int
    #: PortOne V2 receipts (issue 16), each its own paymentId: half PortOne payments (``kind:
    #: payment``, seeded PAID), half cash taken outside (``kind: external``); duplicated too.
    v2: int
    duplicate_share: float
    kills: int
    drain_timeout: float


@dataclass
class Fleet:
    """Worker processes, each in its own process group, killed and replaced at will."""

    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0
    kills: int = 0
    killed: set[int] = field(default_factory=set)

    def start(self) -> None:
        """Start one more worker, as an operator would."""
        self.started += 1
        log = (self.logs / f"worker-{self.started}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [str(BIN / "celery"), "-A", "worker", "worker", "--loglevel", "INFO",
                 "-n", f"chaos{self.started}@%h"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )  # fmt: skip

    def kill_one(self, rng: random.Random) -> None:
        """SIGKILL a random worker with everything in its process group, then replace it."""
        alive = [process for process in self.processes if process.poll() is None]
        assert alive, f"every worker stopped on its own: {self.died()}"
        victim = rng.choice(alive)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)
        self.killed.add(victim.pid)
        self.kills += 1
        self.start()

    def wait_started(self, timeout: float = 120) -> None:
        """Until the newest worker is ready: past its start's fleet check, which refuses the
        start (exit 1) when the broker cannot be asked, as README documents."""
        number, process = self.started, self.processes[-1]
        log = self.logs / f"worker-{number}.log"
        ready = f"chaos{number}@{socket.gethostname()} ready."
        wait_for(
            lambda: process.poll() is not None or ready in log.read_text(errors="replace"),
            timeout=timeout,
            message=f"chaos{number} to start",
        )

    def died(self) -> list[str]:
        """Workers that exited though nobody killed them (a Redis restart once did that)."""
        return [
            f"chaos{number} exited {process.returncode}"
            for number, process in enumerate(self.processes, start=1)
            if process.poll() is not None and process.pid not in self.killed
        ]

    def stop(self) -> None:
        """Stop every worker that still runs."""
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    def text(self) -> str:
        """Every worker's log."""
        return "".join(path.read_text(errors="replace") for path in sorted(self.logs.glob("*.log")))


@pytest.fixture
def profile(request: pytest.FixtureRequest) -> Profile:
    """The short CI profile, or the long one with --chaos-long."""
    if request.config.getoption("--chaos-long"):
        return Profile(
            payments=10_000,
            sales=2_000,
            v2=2_000,
            duplicate_share=0.2,
            kills=6,
            drain_timeout=1800,
        )
    return Profile(payments=300, sales=60, v2=60, duplicate_share=0.2, kills=3, drain_timeout=240)


@pytest.fixture
def chaos_redis(aof_redis: RedisServer) -> RedisServer:
    """A durable Redis (AOF, fsync always) of the suite's own."""
    return aof_redis


@pytest.fixture
def chaos_sandbox() -> Iterator[Sandbox]:
    """The sandbox failing about a fifth of its answers, and worse; a second POST would issue.

    It acts on no request later than the workers' IAMPORT_SETTLE_SECONDS after it arrived.
    """
    late_limit = ("--late-limit-seconds", str(SETTLE_SECONDS))
    retention = ("--idempotency-retention", str(KEY_RETENTION))
    with running_sandbox(*FAULTS, "--allow-duplicates", *late_limit, *retention) as sandbox:
        # A V2 receipt's balance is re-issued under its paymentId (V2_PARTIAL_SHARE).
        sandbox.admin.set_portone_reissue("allow")
        yield sandbox


def fleet_timing(env: dict[str, str]) -> tuple[float, float]:
    """The ledger lease and the sweep interval, as celeryconfig derives them for the fleet."""
    shown = subprocess.run(
        [str(BIN / "python"), "-c",
         "import celeryconfig as c; print(c.ledger_lease_seconds, c.sweep_interval)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(shown[0]), float(shown[1])


def cashreceipt(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the operator's console script against the suite's Redis and sandbox."""
    return subprocess.run(
        [str(BIN / "cashreceipt"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def requested(entry: dict[str, Any]) -> JobKey | None:
    """The job an API request of the sandbox's logs was about: a payment, a sale or a V2
    paymentId; None for getToken."""
    if entry.get("paymentId") is not None:
        return JobKey.portone(entry["paymentId"])
    if entry.get("merchant_uid") is not None:
        return JobKey.external(entry["merchant_uid"])
    return JobKey.payment(entry["imp_uid"]) if entry.get("imp_uid") is not None else None


def late_margin(requests: list[dict[str, Any]], late_ms: dict[JobKey, float]) -> float:
    """How long after a late POST was processed its job's retry looked, at the least.

    A lookup before it would be followed by a second POST: the double issue
    that only a settle bound prevents (tests/integration/test_known_defects.py).
    The first lookup after the POST is the timed-out attempt's own; the retry's
    is the second. Processing ends by the scripted delay plus the jitter.
    """
    jitter = float(FAULTS[FAULTS.index("--latency-jitter-ms") + 1]) / 1000
    by_job: dict[JobKey | None, list[dict[str, Any]]] = {}
    for entry in requests:
        by_job.setdefault(requested(entry), []).append(entry)
    margins = []
    for job, delay in late_ms.items():
        seen = by_job.get(job, [])
        post = next(r for r in seen if r["method"] == "POST")
        lookups = [r["at"] for r in seen if is_lookup(r) and r["at"] > post["at"]]
        if len(lookups) >= 2:
            margins.append(lookups[1] - (post["at"] + delay / 1000 + jitter))
    return min(margins, default=float("inf"))


def is_lookup(entry: dict[str, Any]) -> bool:
    """Whether a request of the sandbox's logs looked a receipt up: i'mport's ``GET
    /receipts/...``, V2's ``GET .../cash-receipt``."""
    path = entry["path"]
    return entry["method"] == "GET" and (
        path.startswith("/receipts/") or path.endswith("/cash-receipt")
    )


def is_v2_issue(entry: dict[str, Any]) -> bool:
    """Whether a request of the V2 log is an issue (``POST /cash-receipts``), not a cancel."""
    return entry["method"] == "POST" and entry["path"].endswith("/cash-receipts")


def is_v2_cancel(entry: dict[str, Any]) -> bool:
    """Whether a request of the V2 log is a cancel (``POST .../cash-receipt/cancel``)."""
    return entry["method"] == "POST" and entry["path"].endswith("/cash-receipt/cancel")


def keys_expired_mid_job(requests: list[dict[str, Any]], late: set[JobKey]) -> int:
    """V2 jobs whose first POST went unanswered (dropped, or answered after the worker's
    timeout) and whose job looked again only once that POST's Idempotency-Key had expired
    (KEY_RETENTION after it): the retry that resending the key would have issued twice."""
    by_job: dict[JobKey | None, list[dict[str, Any]]] = {}
    for entry in requests:
        by_job.setdefault(requested(entry), []).append(entry)
    expired = 0
    for job, seen in by_job.items():
        post = next((r for r in seen if is_v2_issue(r)), None)
        if post is None or (post["status"] is not None and job not in late):
            continue
        if any(r["at"] > post["at"] + KEY_RETENTION for r in seen if is_lookup(r)):
            expired += 1
    return expired


def audit_of_ids(
    name: str, section: dict[str, Any], by_id: str, jobs: Mapping[JobKey, int], blind_undo: str
) -> dict[str, Any]:
    """What a section of the sandbox's audit (external receipts', V2's) says against its jobs,
    each its own id: never two active receipts, as many created as ``jobs`` says (1 + the
    job's re-issues), nothing blind (``blind_undo``: the section's count of blind cancels)."""
    found = section[by_id]
    return {
        f"two active receipts for a {name}": section["double_active"],
        f"receipts created != 1 + re-issues for a {name}": {
            job.id: (found.get(job.id), created) for job, created in jobs.items()
            if (found.get(job.id) or {}).get("created") != created
        },
        f"blind requests for a {name}": {
            u: f for u, f in found.items() if f["blind_posts"] or f[blind_undo]
        },
    }  # fmt: skip


def issue_payload(job: JobKey, index: int, amount: int | None, channel_key: str) -> dict[str, Any]:
    """What the checkout sends for ``job``: a V1 payment's, a V1 sale's or a V2 receipt's."""
    if job.provider == PORTONE:
        return portone_payload(job.id, channel_key, kind=job.kind, amount=amount)
    if job.kind == EXTERNAL:
        return external_payload(job.id, amount=amount)
    return {"imp_uid": job.id, "merchant_uid": f"order-{index}", "identifier": "01055554321"}


def draw_v2(count: int, rng: random.Random, sandbox: Sandbox) -> dict[JobKey, int]:
    """``count`` V2 receipts, each its own paymentId and amount, of both kinds in turn; a
    payment's is seeded PAID by transfer, for that amount."""
    v2: dict[JobKey, int] = {}
    for number in range(count):
        job = JobKey.portone(f"chaos_v2_{uuid.uuid4().hex[:10]}", (PAYMENT, EXTERNAL)[number % 2])
        v2[job] = rng.choice(SALE_AMOUNTS)
        if job.kind == PAYMENT:
            sandbox.admin.seed_portone_payment(
                job.id, status="PAID", amount={"total": v2[job]}, method="TRANSFER"
            )
    return v2


def script_late_post(sandbox: Sandbox, job: JobKey, delay_ms: float) -> None:
    """``job``'s first POST to issue is processed ``delay_ms`` after it arrives."""
    step = {"kind": "latency", "ms": delay_ms, "method": "POST"}
    if job.provider == PORTONE:
        sandbox.admin.script_portone(job.id, {**step, "endpoint": "receipts"})
    elif job.kind == EXTERNAL:
        sandbox.admin.script_external(job.id, step)
    else:
        sandbox.admin.script(job.id, step)


@dataclass
class Refund:
    """One refund the suite sends for a job, once its moment came (``after``): ``issued``, the
    job's receipt issued; ``reissued``, the job's earlier refund's re-issue sent (a POST to issue
    after a cancel), or that refund ended; ``ended``, every earlier refund of the job ended."""

    job: JobKey
    payload: dict[str, Any]
    after: str = "issued"
    #: What the sandbox is told first, at its own moment (``prepare_after``, no later than
    #: ``after``): what the provider's payment shows once refunded.
    prepare: Callable[[SandboxAdmin], object] | None = None
    prepare_after: str = "issued"
    #: Faults scripted for the job's next requests, before it is sent.
    faults: tuple[dict[str, Any], ...] = ()
    #: The same refund as an earlier one, sent again: a duplicate.
    repeat: bool = False
    task_id: str | None = None


def v1_partial_refund(job: JobKey) -> list[Refund]:
    """A V1 payment's partial refund: i'mport's payment shows it, then the cancellation."""
    return [
        Refund(
            job,
            {"imp_uid": job.id, "amount": REFUND_AMOUNT},
            prepare=lambda admin: admin.seed_payment(job.id, cancel_amount=REFUND_AMOUNT),
        )
    ]


def v2_full_refund(job: JobKey) -> list[Refund]:
    """A V2 receipt's full refund: V2's cancel alone."""
    return [Refund(job, {"provider": PORTONE, "kind": job.kind, "payment_id": job.id})]


def v2_partial_refunds(job: JobKey, total: int, number: int) -> list[Refund]:
    """A V2 receipt's refunds in part (V2_PARTIAL_SHARE): the first, the second, the first again;
    the ``number``-th such receipt's first cancel and re-issue meet V2_REFUND_FAULTS in turn,
    and its second refund is sent at one moment or the other, two receipts at a time."""
    first, second = V2_PARTIAL_REFUNDS
    on_cancel, on_reissue = V2_REFUND_FAULTS[number % len(V2_REFUND_FAULTS)]
    faults: tuple[dict[str, Any], ...] = (
        {**on_cancel, "method": "POST", "endpoint": "cancel"},
        {**on_reissue, "method": "POST", "endpoint": "receipts"},
    )

    def refund(refunded: int, left: int, after: str, moved: str, **more: Any) -> Refund:
        """``moved``: when PortOne's payment shows it (a payment's)."""
        payload = {"provider": PORTONE, "kind": job.kind, "payment_id": job.id, "amount": refunded}
        prepare = None
        if job.kind == EXTERNAL:
            payload["remaining_amount"] = left
        elif not more.get("repeat"):
            prepare = lambda admin: admin.refund_portone_payment(  # noqa: E731
                job.id, total=total, cancelled=total - left
            )
        return Refund(job, payload, after, prepare, moved, **more)

    # As soon as the first's re-issue was sent, PortOne's payment shows the second refund; in
    # turn, the second is sent then (it may take over the first, parked to look after its
    # re-issue's fault) or once the first ended (the first's re-issue, sent again under its
    # key, meets a payment that has moved).
    second_after = ("reissued", "ended")[number // 2 % 2]
    return [
        refund(first, total - first, "issued", "issued", faults=faults),
        refund(second, total - first - second, second_after, "reissued"),
        refund(first, total - first, "ended", "ended", repeat=True),
    ]


def receipts_left(amount: int, *, in_full: bool, in_part: bool) -> tuple[int, list[int]]:
    """What the sandbox should hold for a sale or a V2 receipt of ``amount``: its first
    receipt's amount, and the live ones': one for ``amount`` unless refunded ``in_full``, none
    then; refunded ``in_part``, one for what every refund (V2_PARTIAL_REFUNDS) left."""
    if in_full:
        return amount, []
    return amount, [amount - sum(V2_PARTIAL_REFUNDS) if in_part else amount]


def reissue_sent(requests: list[dict[str, Any]]) -> bool:
    """Whether a V2 job's log shows a POST to issue after a cancel: a refund's re-issue."""
    cancels = (n for n, r in enumerate(requests) if is_v2_cancel(r))
    first_cancel = next(cancels, None)
    return first_cancel is not None and any(is_v2_issue(r) for r in requests[first_cancel:])


def keys_reused(requests: list[dict[str, Any]]) -> dict[str, Any]:
    """V2 Idempotency-Keys sent with more than one request (path and body), by the log, or that
    the sandbox found reused: the same key for another request."""
    sent: dict[str, set[str]] = {}
    for r in requests:
        if r["method"] == "POST" and r["idempotency_key"] is not None:
            request = json.dumps([r["path"], r["body"]], sort_keys=True)
            sent.setdefault(r["idempotency_key"], set()).add(request)
    return {key: sorted(bodies) for key, bodies in sent.items() if len(bodies) > 1} | {
        r["idempotency_key"]: "reused" for r in requests if r["idempotency"] == "reused"
    }


def what_told(batch: list[dict[str, Any]]) -> list[tuple[str, bool, int | None]]:
    """What a task message's events said: each one's type, whether a duplicate, and the
    amount of the receipt it names."""
    return [(e["type"], e["duplicate"], (e.get("receipt") or {}).get("amount")) for e in batch]


def enqueue_with_patience(
    producer: Celery, payload: dict[str, Any], deadline: float, enqueue: Any = enqueue_issue
) -> str:
    """Enqueue like a checkout would: retry while Redis is down, up to a deadline.

    Every try carries the same task id, as the helper asks of a retried request: a try that
    failed after recording the job is then the same message, not a second one.
    """
    task_id = str(uuid.uuid4())
    while True:
        try:
            return str(enqueue(payload, app=producer, task_id=task_id))
        except (OperationalError, redis.RedisError, ConnectionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.timeout(2400)
def test_exactly_once_under_chaos(
    profile: Profile, chaos_redis: RedisServer, chaos_sandbox: Sandbox, tmp_path: Path
) -> None:
    """Every payment and sale: one live receipt, one transition per message, nothing blind or
    stuck."""
    rng = random.Random(20261124)
    env = portone_env(
        chaos_redis.url,
        chaos_sandbox,
        IAMPORT_TIMEOUT=str(IAMPORT_TIMEOUT),
        IAMPORT_SETTLE_SECONDS=str(SETTLE_SECONDS),
        PORTONE_TIMEOUT=str(IAMPORT_TIMEOUT),
        PORTONE_SETTLE_SECONDS=str(SETTLE_SECONDS),
        RETRY_BACKOFF_BASE="0.05",
        RETRY_BACKOFF_MAX="0.5",
        RETRY_COUNTDOWN_MAX="0.5",
        RETRY_MAX_ATTEMPTS="200",
        SWEEP_INTERVAL="0.5",
        DUPLICATE_WAIT="2",
        # The default pool and concurrency (WORKER_CONCURRENCY unset), as operators run it.
        WORKER_CONCURRENCY="",
    )
    fleet = Fleet(env=env, logs=tmp_path)
    fleet.start()
    fleet.start()
    producer = Celery("checkout", broker=chaos_redis.url)
    producer.conf.pii_encryption_keys = [TEST_PII_KEY]
    producer.conf.broker_visibility_timeout = 21
    producer.conf.providers = BOTH_PROVIDERS

    imp_uids = [f"chaos_{uuid.uuid4().hex[:10]}" for _ in range(profile.payments)]
    payments = [JobKey.payment(imp_uid) for imp_uid in imp_uids]
    # Each sale its own merchant_uid and amount; its duplicates ask for the same amount.
    sales = {
        JobKey.external(f"chaos_sale_{uuid.uuid4().hex[:10]}"): rng.choice(SALE_AMOUNTS)
        for _ in range(profile.sales)
    }
    v2 = draw_v2(profile.v2, rng, chaos_sandbox)
    amounts = {**sales, **v2}
    late = rng.sample(payments, int(profile.payments * LATE_POST_SHARE))
    late += rng.sample(list(sales), int(profile.sales * LATE_POST_SHARE))
    # More of V2's: each is a key that expires before its job's retry (KEY_RETENTION).
    late += rng.sample(list(v2), int(profile.v2 * V2_LATE_SHARE))
    late_ms: dict[JobKey, float] = {}
    for job in late:
        late_ms[job] = rng.uniform(*LATE_POST_MS)
        script_late_post(chaos_sandbox, job, late_ms[job])
    plan = [*payments, *sales, *v2]
    plan += [rng.choice(payments) for _ in range(int(profile.payments * profile.duplicate_share))]
    plan += [rng.choice(list(sales)) for _ in range(int(profile.sales * profile.duplicate_share))]
    plan += [rng.choice(list(v2)) for _ in range(int(profile.v2 * profile.duplicate_share))]
    rng.shuffle(plan)
    partly = rng.sample(payments, int(profile.payments * REFUND_SHARE))
    plans = {job: v1_partial_refund(job) for job in partly}
    # V2 receipts refunded in full: the cancel alone.
    in_full_drawn = rng.sample(list(v2), int(profile.v2 * V2_REFUND_SHARE))
    plans |= {job: v2_full_refund(job) for job in in_full_drawn}
    in_full = set(in_full_drawn)
    # V2 receipts refunded in part, of each kind: the cancel and the balance re-issued, twice.
    in_part: list[JobKey] = []
    for kind in (PAYMENT, EXTERNAL):
        of_kind = [job for job in v2 if job.kind == kind and job not in in_full]
        in_part += rng.sample(of_kind, int(profile.v2 / 2 * V2_PARTIAL_SHARE))
    plans |= {job: v2_partial_refunds(job, v2[job], n) for n, job in enumerate(in_part)}
    refunded = set(plans)
    sent: list[tuple[str, JobKey]] = []  # (task_id, job)
    refunds: list[tuple[str, JobKey]] = []  # (task_id, job)
    started = time.monotonic()
    drained = 0.0

    def produce() -> None:
        channel_key = chaos_sandbox.portone_channel_key
        for index, job in enumerate(plan):
            payload = issue_payload(job, index, amounts.get(job), channel_key)
            sent.append((enqueue_with_patience(producer, payload, time.monotonic() + 60), job))
            time.sleep(rng.uniform(0, 0.01))

    def came(moment: str, refund: Refund, earlier: list[Refund], seen: set[str]) -> bool:
        """Whether a ``moment`` of ``refund`` (:class:`Refund`) came, its job's ``earlier``
        refunds sent; ``seen``: the receipt keys issued and the task ids ended so far."""
        if moment == "issued":
            return refund.job.receipt_key in seen
        if all(e.task_id in seen for e in earlier):
            return True
        return moment == "reissued" and reissue_sent(
            chaos_sandbox.admin.portone_requests(refund.job.id)
        )

    def refund(deadline: float) -> None:
        """Send each refunded job's refunds in turn, each as soon as its moment came: part of
        a V1 payment (cancel, then re-issue the rest), all of a V2 receipt (V2's cancel), or
        part of a V2 receipt, twice and the first again (v2_partial_refunds)."""
        waiting = {job: list(steps) for job, steps in plans.items()}
        done: dict[JobKey, list[Refund]] = {job: [] for job in plans}
        seen: set[str] = set()  # receipt keys issued, task ids ended
        prepared: set[int] = set()
        after = "-"
        while waiting and time.monotonic() < deadline:
            try:
                for entry_id, fields in chaos_redis.client().xrange(
                    "cash_receipt.events", min=after if after == "-" else f"({after}"
                ):
                    after = entry_id
                    data = json.loads(fields["data"])
                    if fields["type"] == "cash_receipt.issued":
                        seen.add(data["receipt_key"])
                    if fields["type"] in CANCEL_EVENTS:
                        seen.add(data["task_id"])
            except (redis.RedisError, ConnectionError):
                pass  # Redis is down on purpose: look again once it is back
            for job in list(waiting):
                step = waiting[job][0]
                if id(step) not in prepared and came(step.prepare_after, step, done[job], seen):
                    if step.faults:
                        chaos_sandbox.admin.script_portone(job.id, *step.faults)
                    if step.prepare is not None:
                        step.prepare(chaos_sandbox.admin)
                    prepared.add(id(step))
                if id(step) not in prepared or not came(step.after, step, done[job], seen):
                    continue
                step.task_id = enqueue_with_patience(
                    producer, step.payload, deadline, enqueue_cancel
                )
                refunds.append((step.task_id, job))
                done[job].append(waiting[job].pop(0))
                if not waiting[job]:
                    del waiting[job]
            time.sleep(0.3)

    producing = threading.Thread(target=produce)
    producing.start()
    refunding = threading.Thread(target=refund, args=(time.monotonic() + profile.drain_timeout,))
    refunding.start()
    kill_points = sorted(rng.uniform(0.1, 0.9) for _ in range(profile.kills))
    redis_point = rng.uniform(0.3, 0.7)
    events_so_far = lambda: len(sent)  # noqa: E731
    redis_restarts = 0
    for point in kill_points:
        wait_for(lambda p=point: events_so_far() >= p * len(plan), timeout=120, message="progress")
        fleet.kill_one(rng)
        if redis_point is not None and events_so_far() >= redis_point * len(plan):
            # Not while the replacement starts: its start's fleet check, unable to ask the
            # broker, would refuse the start (README), and count as a worker that stopped.
            fleet.wait_started()
            chaos_redis.stop()
            time.sleep(rng.uniform(0.5, 1.5))  # an outage of some length, on purpose
            chaos_redis.start()
            redis_restarts += 1
            redis_point = None
    producing.join(timeout=300)
    assert not producing.is_alive(), "the producer did not finish"
    if redis_point is not None:
        fleet.wait_started()
        chaos_redis.stop()
        chaos_redis.start()
        redis_restarts += 1

    refunding.join(timeout=profile.drain_timeout + 60)
    assert not refunding.is_alive(), "the refunds did not finish"
    assert len(refunds) == sum(map(len, plans.values())), "a refund was never sent"
    client = chaos_redis.client()

    def events_by_task() -> dict[str, list[dict[str, object]]]:
        found: dict[str, list[dict[str, object]]] = {}
        for entry_id, fields in client.xrange("cash_receipt.events"):
            data = json.loads(fields["data"])
            at = int(entry_id.split("-")[0]) / 1000  # Redis's clock: this host's
            found.setdefault(data["task_id"], []).append({"type": fields["type"], "at": at, **data})
        return found

    wanted = {task_id for task_id, _ in sent + refunds}
    refund_tasks = {task_id for task_id, _ in refunds}

    def transitions(task_id: str, batch: list[dict[str, object]]) -> int:
        """Terminal transitions: a partial refund's cancelled + issued events are one."""
        if task_id in refund_tasks:
            return sum(1 for e in batch if e["type"] in CANCEL_EVENTS)
        return len(batch)

    lease, sweep_interval = fleet_timing(env)
    try:
        try:
            wait_for(
                lambda: wanted <= set(events_by_task()),
                timeout=profile.drain_timeout,
                interval=0.5,
                message="an event for every task message",
            )
        except WaitTimeout:
            silent = sorted(wanted - set(events_by_task()))
            named = dict(sent + refunds)
            raise AssertionError(
                f"{len(silent)} task message(s) without an event: "
                + "; ".join(
                    f"{t} ({named[t].receipt_key}: ledger "
                    f"{client.hmget(record_key(named[t].receipt_key), ['task_id', 'state'])}, "
                    f"history {job_history(client, named[t])[:4]})"
                    for t in silent[:5]
                )
            ) from None
        drained = time.monotonic() - started
        # A worker killed holding a job resumes it only after its lease, and the
        # sweeper re-sends within an interval: wait that out past the last first
        # event before counting, so a late second event has had its chance.
        # One read of the stream, not one per task: at 12,000 messages that was 12,000
        # reads of 12,000 events, and the long profile ran out of its 40 minutes here.
        first_events = events_by_task()
        last_first = max(min(float(e["at"]) for e in first_events[t]) for t in wanted)
        quiet_until = last_first + lease + 2 * sweep_interval
        repeated = lambda: any(transitions(t, b) > 1 for t, b in events_by_task().items())  # noqa: E731
        wait_for(
            lambda: time.time() >= quiet_until or repeated(),
            timeout=quiet_until - time.time() + 30,
            interval=0.5,
            message="a lease and two sweeps past the last first event",
        )
    finally:
        died = fleet.died()
        fleet.stop()

    events = events_by_task()
    audit = chaos_sandbox.admin.audit()
    created = {u: audit["payments"].get(u, {}).get("created", 0) for u in imp_uids}
    # What the sandbox holds for each sale and V2 receipt, from its own audit and receipts, not
    # the events: (amount, live, receipt_tid) for each receipt, oldest first.
    held_receipts: dict[JobKey, list[tuple[int | None, bool, str | None]]] = {}
    for receipt in chaos_sandbox.admin.receipts()["external_receipts"]:
        held_receipts.setdefault(JobKey.external(receipt["merchant_uid"]), []).append(
            (receipt["amount"], receipt["cancelled_at"] == 0, receipt["receipt_tid"])
        )
    for receipt in chaos_sandbox.admin.portone_receipts()["receipts"]:
        held_receipts.setdefault(JobKey.portone(receipt["paymentId"]), []).append(
            (receipt.get("amount"), receipt["status"] == "ISSUED", receipt.get("pgReceiptId"))
        )
    v2_requests = chaos_sandbox.admin.portone_requests()
    requests = chaos_sandbox.admin.requests()
    per_task = Counter({task_id: transitions(task_id, events[task_id]) for task_id in wanted})
    non_duplicate_issued = Counter(
        event["receipt_key"]
        for batch in events.values()
        for event in batch
        if event["type"] == "cash_receipt.issued" and not event["duplicate"]
    )
    # Each task message of a sale or a V2 receipt never refunded ends issued, naming the one
    # receipt the sandbox created for it.
    sale_events_apart: dict[str, Any] = {}
    for task_id, job in sent:
        if job in amounts and job not in refunded:
            held = [("cash_receipt.issued", tid) for _, _, tid in held_receipts.get(job, [])]
            told = [
                (e["type"], (e.get("receipt") or {}).get("receipt_tid")) for e in events[task_id]
            ]
            if told != held:
                sale_events_apart[task_id] = {"job": job.receipt_key, "told": told, "held": held}
    failures = [
        e
        for batch in events.values()
        for e in batch
        if e["type"] not in {"cash_receipt.issued", "cash_receipt.cancelled"}
    ]
    duplicates = sum(1 for batch in events.values() for e in batch if e["duplicate"])
    posts = sum(1 for r in requests if r["method"] == "POST")
    v2_posts = sum(1 for r in v2_requests if is_v2_issue(r))
    histories = {job: job_history(client, job) for job in [*payments, *amounts]}
    # Real task retries: every retry or park the ledger recorded
    # (worker/adapters/store/ledger.py history).
    retries = sum(1 for h in histories.values() for entry in h if entry["outcome"] == "retry")
    reissues = Counter(
        job.id
        for job, h in histories.items()
        for entry in h
        if (entry["op"], entry.get("then")) == ("cancel", "cash_receipt.issued")
    )
    states = {job: client.hget(record_key(job.receipt_key), "state") for job in histories}
    late_set = set(late)
    late_answered = sum(
        1 for r in [*requests, *v2_requests] if r["method"] == "POST" and requested(r) in late_set
    )
    margin = late_margin([*requests, *v2_requests], late_ms)
    expired = keys_expired_mid_job(v2_requests, late_set)
    # POSTs to issue sent again under their Idempotency-Key (their bodies checked below).
    resent_keys = sum(
        1
        for n in Counter(r["idempotency_key"] for r in v2_requests if is_v2_issue(r)).values()
        if n > 1
    )
    jobs = len(imp_uids) + len(amounts)
    print(
        "\nchaos: "
        f"{len(plan)} payment and sale events ({len(imp_uids)} payments, {len(sales)} external "
        f"sales, {len(v2)} PortOne V2 receipts, {len(plan) - jobs} duplicates), "
        f"{len(refunds)} refunds ({sum(reissues.values())} partial with a re-issue, "
        f"{len(in_full)} of V2 receipts in full, {len(in_part)} V2 receipts refunded in part "
        f"three times: the first, the second, the first again), "
        f"{sum(created.values())} payment receipts, "
        f"{audit['external']['receipts_created']} external receipts, "
        f"{audit['portone']['receipts_created']} V2 receipts ({v2_posts - len(v2)} V2 POSTs "
        f"beyond one per receipt; {expired} V2 keys expired before their job looked again, "
        f"{resent_keys} sent again), "
        f"{duplicates} duplicates absorbed, "
        f"{retries} task retries, {posts - jobs - sum(reissues.values())} POSTs "
        "beyond one per payment, sale and re-issue "
        f"(each after a lookup found nothing), {len(late)} payments and sales whose POST was "
        f"processed after the timeout ({late_answered} POSTs for them; the retry's lookup came "
        f"{margin:.2f}s or more after one was processed), {len(requests)} API calls, "
        f"{audit['blind_posts'] + audit['external']['blind_posts']} blind POSTs, "
        f"{audit['blind_deletes'] + audit['external']['blind_deletes']} blind DELETEs, "
        f"{audit['portone']['blind_posts']} blind V2 POSTs, "
        f"{audit['portone']['blind_cancels']} blind V2 cancels, "
        f"{fleet.kills} worker kills, {redis_restarts} Redis restart(s), "
        f"{fleet.text().count('sweeper re-sent')} sweeps that re-sent jobs, "
        f"drained in {drained:.1f}s, then {lease + 2 * sweep_interval:g}s more (a lease "
        f"{lease:g}s and two sweeps {sweep_interval:g}s)"
    )

    # Every check is computed, then all are asserted at once, so a failure shows
    # each guarantee it broke rather than the first.
    stuck = cashreceipt(env, "stuck", "--older-than", "0")
    # Exit 1 with nothing on either stream: an uncaught exception exits 1 too.
    nothing_stuck = (stuck.returncode, stuck.stdout, stuck.stderr) == (1, "", "")
    # Asked once the outage is over: reconcile retries only briefly, then reports.
    chaos_sandbox.admin.clear_faults()
    # --limit: without it, reconcile checks the first 10,000 records and says nothing of the
    # rest (the long profile has 12,000 jobs).
    reconciled = cashreceipt(env, "reconcile", "--limit", str(jobs))
    reconcile_clean = (
        reconciled.returncode == 0
        and reconciled.stdout == ""
        and f"{jobs} checked, 0 mismatched, 0 not checked" in reconciled.stderr
    )
    broken = {
        # What the provider saw: never a second receipt, nothing sent against a lookup.
        "two active receipts": audit["double_active"],
        "receipts created != 1 + re-issues": {
            u: (n, reissues[u]) for u, n in created.items() if n != 1 + reissues[u]
        },
        "blind requests": {
            u: f for u, f in audit["payments"].items() if f["blind_posts"] or f["blind_deletes"]
        },
        **audit_of_ids(
            "merchant_uid", audit["external"], "merchant_uids", dict.fromkeys(sales, 1),
            "blind_deletes",
        ),
        # V2's blind POSTs count its blind retries (a new key after an unanswered POST).
        **audit_of_ids(
            "V2 paymentId", audit["portone"], "payment_ids",
            {job: 1 + reissues[job.id] for job in v2}, "blind_cancels",
        ),
        # Receipts created as the audit says (1 + re-issues), the first for the amount asked,
        # one live unless refunded in full: for what the refunds left.
        "external or V2 receipts not for the amount asked, or not as their refund left them": {
            job.receipt_key: receipts for job, amount in amounts.items()
            for receipts in [held_receipts.get(job, [])]
            if (receipts[0][0] if receipts else None, [a for a, live, _ in receipts if live])
            != receipts_left(amount, in_full=job in in_full, in_part=job in in_part)
        },
        # Nothing sent again under its Idempotency-Key but the request it was first sent with.
        "V2 Idempotency-Keys sent with another request": keys_reused(v2_requests),
        # What the helper's callers saw.
        "failure events": failures[:3],
        "task messages without exactly one terminal event": {
            t: n for t, n in per_task.items() if n != 1
        },
        "events for no task message sent": sorted(set(events) - wanted)[:5],
        "payments without 1 + re-issues non-duplicate issued events": [
            u for u in imp_uids
            if non_duplicate_issued[JobKey.payment(u).receipt_key] != 1 + reissues[u]
        ],
        "sales and V2 receipts without 1 + re-issues non-duplicate issued events": [
            job.receipt_key for job in amounts
            if non_duplicate_issued[job.receipt_key] != 1 + reissues[job.id]
        ],
        "sale and V2 task messages whose event is not the sandbox's one receipt":
            sale_events_apart,
        "partial refunds without a re-issue": sorted(
            job.id for job in refunded if job in payments and job.id not in reissues
        ),
        "V2 receipts refunded in part without a re-issue (what each refund's events told)": {
            job.id: [what_told(events.get(s.task_id, [])) for s in plans[job]]
            for job in in_part if not reissues[job.id]
        },
        "repeated refunds that were not a duplicate, nothing sent": {
            step.task_id: [(e["type"], e["duplicate"]) for e in events[step.task_id]]
            for steps in plans.values() for step in steps
            if step.repeat and step.task_id is not None
            and [(e["type"], e["duplicate"]) for e in events[step.task_id]]
            != [("cash_receipt.cancelled", True)]
        },
        # What operators see.
        "workers that stopped on their own": died,
        "unrecoverable errors in the workers' logs": fleet.text().count("Unrecoverable error"),
        "ledger records not terminal": {
            job.receipt_key: s for job, s in states.items() if s not in TERMINAL_STATES
        },
        "cashreceipt stuck": [] if nothing_stuck else [
            stuck.returncode, stuck.stdout[:500], stuck.stderr[-500:]
        ],
        "cashreceipt reconcile": [] if reconcile_clean else [
            reconciled.returncode, reconciled.stdout[:500], reconciled.stderr[-500:]
        ],
    }  # fmt: skip
    found = {check: what for check, what in broken.items() if what}
    assert not found, "\n".join(f"{check}: {str(what)[:600]}" for check, what in found.items())
    # That the chaos happened.
    assert fleet.kills >= profile.kills
    assert redis_restarts == 1
    assert retries > 0
    assert expired > 0, "no V2 key expired before its job looked again"
    assert "01055554321" not in fleet.text()
