"""``make run``: the product, locally, in one command.

Starts a worker and Flower (basic auth) against ``REDIS_URL`` (or a private
redis-server when nothing answers there: worker/demo_redis.py), and the i'mport
sandbox when no i'mport credentials are set. Then it feeds in a few sample
payment-confirmed events with new imp_uids, waits for their result events with
a progress line, shows what happened (receipts issued, one failure explained),
and keeps everything running until Ctrl-C so Flower can be explored.

It never issues real receipts by accident: with IAMPORT_KEY and IAMPORT_SECRET
set it only starts when ``--live`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
import requests
from cryptography.fernet import Fernet

from worker.adapters.store.durability import ACCEPT_RISK
from worker.adapters.store.events import latest_event
from worker.adapters.store.redis_client import redis_client
from worker.celery.producer import enqueue_issue
from worker.config import defaults
from worker.config.load import load_celeryconfig
from worker.core.events import ISSUED
from worker.core.schemas import load_payload
from worker.core.types import JobKey
from worker.core.urls import redact_url
from worker.demo_redis import NoRedis, RedisPlan, free_port, plan_redis

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
LOGS = ROOT / ".run"
SANDBOX_KEY, SANDBOX_SECRET = "sandbox_key", "sandbox_secret"
#: The sandbox's PortOne V2 defaults (docs/sandbox.md).
PORTONE_SANDBOX_SECRET = "sandbox_portone_secret"  # noqa: S105 (the sandbox's documented default)
PORTONE_SANDBOX_STORE = "store-sandbox"
PORTONE_CHANNEL_KEY = "channel-key-sandbox"
# A demo's worker holds nothing worth 30 s of soft shutdown, and Ctrl-C should feel
# immediate; an operator's WORKER_SOFT_SHUTDOWN_TIMEOUT still wins.
DEMO_SOFT_SHUTDOWN = "5"
# How long the worker, Flower and the sandbox get, together, to exit after SIGTERM
# before SIGKILL: the soft shutdown plus room for a loaded machine. Redis then gets
# its own STOP_GRACE, last, once nothing writes to it any more.
STOP_GRACE = 15.0
FLOWER_GRACE = 3.0


def samples(run_id: str) -> list[dict[str, Any]]:
    """Sample receipts: payments confirmed, one sale in cash outside i'mport (an external
    receipt), the same through PortOne V2, and a last one the tax service refuses."""
    return [
        {
            "imp_uid": f"demo_{run_id}_phone",
            "merchant_uid": f"order-{run_id}-1",
            "identifier": "010-1234-5678",
            "identifier_type": "phone",
        },
        {
            "imp_uid": f"demo_{run_id}_business",
            "merchant_uid": f"order-{run_id}-2",
            "identifier": "116-82-00276",
            "identifier_type": "business",
            "type": "company",
            "tax_free": 1100,
        },
        {
            "imp_uid": f"demo_{run_id}_card",
            "merchant_uid": f"order-{run_id}-3",
            "identifier": "1234-5678-9012-345678",
            "identifier_type": "taxcard",
        },
        {
            # Cash taken at the counter, outside i'mport: an external receipt.
            "kind": "external",
            "merchant_uid": f"counter-{run_id}-5",
            "channel_key": "demo-channel",
            "order_name": "Counter sale",
            "amount": 22000,
            "identifier": "010-2345-6789",
            "pay_method": "trans",
        },
        {
            # The same through PortOne V2, where PROVIDERS names it (the sandbox's does).
            "provider": "portone",
            "kind": "external",
            "payment_id": f"cash-{run_id}-6",
            "channel_key": PORTONE_CHANNEL_KEY,
            "order_name": "Counter sale (V2)",
            "amount": 16500,
            "identifier": "010-3456-7890",
            "identifier_type": "phone",
        },
        {
            # 11 digits that are not a mobile number: the sandbox's tax service
            # refuses it, as the real one does ("TS1 발행 요청 번호 오류").
            "imp_uid": f"demo_{run_id}_rejected",
            "merchant_uid": f"order-{run_id}-4",
            "identifier": "12345678901",
        },
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m worker.demo``."""
    args = _parser().parse_args(argv)
    logs: Path = args.run_dir.resolve()

    env = dict(os.environ)
    try:
        plan = plan_redis(
            env.get("REDIS_URL", defaults.REDIS_URL), logs, env.get("PATH", os.defpath)
        )
    except NoRedis as error:
        print(error)
        return 2
    notice = _use_redis(plan, env)
    if env.get("IAMPORT_KEY") and not args.live:
        print("IAMPORT_KEY is set: this would issue real receipts. Add --live to mean it.")
        return 2

    use_sandbox = not env.get("IAMPORT_KEY")
    port = free_port()
    _demo_defaults(env, logs, sandbox_port=port if use_sandbox else None)
    flower_port = args.flower_port or free_port()
    # Check every setting before anything starts, with the same message a worker gives.
    os.environ.update(env)
    load_celeryconfig()

    logs.mkdir(parents=True, exist_ok=True)
    # `kill`, a closed terminal or a supervisor stop must not orphan the worker, which would
    # go on taking messages from REDIS_URL: turn them into an exit that runs the `finally`.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on_signal)
    # Started in the background by a shell without job control (`make run &`, a CI
    # script), a process inherits SIGINT ignored, Python then leaves it so, and Ctrl-C
    # (SIGINT to the group) would stop the worker but never the demo, which waited on.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    children: list[subprocess.Popen[bytes]] = []
    flower: subprocess.Popen[bytes] | None = None
    try:
        if plan.command is not None:
            children.append(_start_redis(plan.url, plan.command, env, logs))
        else:
            print(f"Redis             {redact_url(plan.url)}  (yours, already running)")
        if notice:
            print(notice)
        if use_sandbox:
            children.append(
                _spawn("sandbox", [BIN / "iamport-sandbox", "--port", str(port)], env, logs)
            )
            _wait_http(f"http://127.0.0.1:{port}/__sandbox__/health", "the i'mport sandbox", logs)
            print(f"i'mport sandbox   http://127.0.0.1:{port}  (no credentials given)")
        celery = BIN / "celery"
        children.append(
            _spawn(
                "worker",
                [celery, "-A", "worker", "worker", "--loglevel", "INFO", "-n", "demo@%h"],
                env,
                logs,
            )
        )
        flower = _spawn(
            "flower",
            [celery, "-A", "worker", "flower", f"--port={flower_port}", "--read_only=true"],
            env,
            logs,
        )
        children.append(flower)
        user, _, password = env["FLOWER_BASIC_AUTH"].partition(":")
        flower_url = f"http://127.0.0.1:{flower_port}"
        print(f"Flower            {flower_url}  (user {user}, password {password})")
        if env["METRICS_PORT"] != "0":
            print(f"Metrics           http://127.0.0.1:{env['METRICS_PORT']}/metrics")
        print(f"Logs              {logs}/")
        running = ["Worker", "Flower"] + ["sandbox"] * use_sandbox
        running += ["the Redis it started"] * (plan.command is not None)
        return _feed_and_show(env, args, children, logs, running=running)
    except KeyboardInterrupt:
        print("\nInterrupted; stopping.")
        return 128 + signal.SIGINT
    finally:
        _stop_all(
            children,
            flower=flower,
            redis_server=children[0] if plan.command is not None else None,
            soft_shutdown=float(env["WORKER_SOFT_SHUTDOWN_TIMEOUT"]),
        )


def _use_redis(plan: RedisPlan, env: dict[str, str]) -> str | None:
    """REDIS_URL, and REDIS_DURABILITY=accept-risk for a Redis the demo did not start and
    that may lose writes, unless the user set it: the line that says so (or the plan's)."""
    env["REDIS_URL"] = plan.url
    if not plan.accept_risk:
        return plan.notice
    if env.get("REDIS_DURABILITY"):
        return None  # the user's own choice; a refusing worker's log says why
    env["REDIS_DURABILITY"] = ACCEPT_RISK
    return plan.notice


def _demo_defaults(env: dict[str, str], logs: Path, *, sandbox_port: int | None) -> None:
    """What the demo sets where the user set nothing: the sandbox, a local PII key, a
    Flower password, free ports and a short soft shutdown."""
    if sandbox_port is not None:
        env.update(
            IAMPORT_API_URL=f"http://127.0.0.1:{sandbox_port}",
            IAMPORT_KEY=SANDBOX_KEY,
            IAMPORT_SECRET=SANDBOX_SECRET,
        )
        # The sandbox serves PortOne V2 under /portone, with its documented defaults.
        env.setdefault("PROVIDERS", "iamport,portone")
        env.update(
            PORTONE_API_URL=f"http://127.0.0.1:{sandbox_port}/portone",
            PORTONE_API_SECRET=PORTONE_SANDBOX_SECRET,
            PORTONE_STORE_ID=PORTONE_SANDBOX_STORE,
        )
    if not (env.get("PII_ENCRYPTION_KEYS") or env.get("PII_ENCRYPTION_KEYS_FILE")):
        env["PII_ENCRYPTION_KEYS_FILE"] = str(_local_key_file(logs))
    if not env.get("FLOWER_BASIC_AUTH"):
        env["FLOWER_BASIC_AUTH"] = f"admin:{secrets.token_urlsafe(12)}"
    # A free port, not the fixed default: the demo must start next to anything.
    env.setdefault("METRICS_PORT", str(free_port()))
    env.setdefault("WORKER_SOFT_SHUTDOWN_TIMEOUT", DEMO_SOFT_SHUTDOWN)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker.demo", description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the results are shown")
    parser.add_argument("--flower-port", type=int, default=5555, help="0 picks a free port")
    parser.add_argument("--live", action="store_true", help="allow real i'mport credentials")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results")
    parser.add_argument(
        "--run-dir", type=Path, default=LOGS, help="logs, the local PII key, a private Redis's data"
    )
    return parser


def _start_redis(
    url: str, command: Sequence[str], env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    """The private redis-server, answering PING; its log is redis.log."""
    (logs / "redis").mkdir(exist_ok=True)
    # Its own session: a Ctrl-C in the terminal reaches the demo alone, which stops Redis
    # last (its `finally`), after the worker has handed its tasks back to it.
    process = _spawn("redis", command, env, logs, new_session=True)
    client = redis_client(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if client.ping():
                return process
        except redis.RedisError:
            time.sleep(0.1)
    _stop((process, STOP_GRACE))
    raise SystemExit(f"redis-server did not start; see {logs}/redis.log")


def _feed_and_show(
    env: dict[str, str],
    args: argparse.Namespace,
    children: list[Any],
    logs: Path,
    *,
    running: Sequence[str],
) -> int:
    config = load_celeryconfig()
    client = redis_client(config.ledger_backend_url)
    run_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
    # Only the providers the worker serves: a live run without PortOne sends no V2 sample.
    payloads = [
        payload
        for payload in samples(run_id)
        if payload.get("provider", "iamport") in config.providers
    ]
    jobs = [load_payload(payload).job for payload in payloads]
    tasks = {enqueue_issue(payload): job for payload, job in zip(payloads, jobs, strict=True)}
    print(
        f"\nEnqueued {len(tasks)} receipts: payments confirmed, and cash at a counter "
        f"(run {run_id})."
    )

    outcomes: dict[JobKey, dict[str, Any]] = {}
    deadline = time.monotonic() + args.timeout
    while len(outcomes) < len(tasks) and time.monotonic() < deadline:
        for process in children:
            if process.poll() is not None:
                print(f"\n{process.args[0]} exited; see {logs}/")
                return 1
        for task_id, job in tasks.items():
            event = latest_event(client, stream=config.result_stream, job=job)
            if event and event["data"]["task_id"] == task_id:
                outcomes[job] = event
        done = len(outcomes)
        bar = "#" * (done * 20 // len(tasks))
        print(f"\rWaiting for result events [{bar:<20}] {done}/{len(tasks)}", end="", flush=True)
        time.sleep(0.2)
    print()
    for job in jobs:
        print(_describe(job.imp_uid or job.receipt_key, outcomes.get(job)))
    if len(outcomes) < len(tasks):
        print(f"Not every result arrived within {args.timeout:g}s; see {logs}/worker.log")
        return 1
    print(
        f"\nEvents are in the Redis stream {config.result_stream!r}; "
        "`cashreceipt status <imp_uid>` shows one."
    )
    if args.once:
        return 0
    try:
        # The line is inside the `try`: a Ctrl-C that arrives right after it is shown,
        # before pause(), must stop the demo the same way (seen: exit by SIGINT, -2).
        names = ", ".join(running[:-1]) + f" and {running[-1]}"
        print(f"{names} keep running. Ctrl-C stops them.", flush=True)
        signal.pause()
    except KeyboardInterrupt:
        print()
    return 0


def _describe(imp_uid: str, event: dict[str, Any] | None) -> str:
    if event is None:
        return f"  {imp_uid:<36} no result yet"
    data = event["data"]
    if event["type"] == ISSUED:
        receipt = data["receipt"]
        return (
            f"  {imp_uid:<36} ISSUED  amount {receipt['amount']} vat {receipt['vat']} "
            f"apply_num {receipt['apply_num']}"
        )
    error = data["error"]
    return (
        f"  {imp_uid:<36} FAILED  {error['reason']} after {data['attempts']} attempts: "
        f"HTTP {error['status']} {json.dumps(error['message'], ensure_ascii=False)}"
    )


def _spawn(
    name: str, command: Sequence[Any], env: dict[str, str], logs: Path, *, new_session: bool = False
) -> subprocess.Popen[bytes]:
    log = (logs / f"{name}.log").open("wb")
    return subprocess.Popen(
        [str(part) for part in command],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=new_session,
    )


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _stop_all(
    children: list[subprocess.Popen[bytes]],
    *,
    flower: subprocess.Popen[bytes] | None,
    redis_server: subprocess.Popen[bytes] | None,
    soft_shutdown: float,
) -> None:
    """Everything but Redis together, then Redis, once nothing writes to it any more.

    Flower keeps no state, and after a Ctrl-C it can hang joining a thread that waits
    on the broker (its SIGTERM handler's exit is then ignored): it gets FLOWER_GRACE.
    """
    _stop(
        *(
            (child, FLOWER_GRACE if child is flower else soft_shutdown + STOP_GRACE)
            for child in children
            if child is not redis_server
        )
    )
    if redis_server is not None:
        _stop((redis_server, STOP_GRACE))


def _stop(*stops: tuple[subprocess.Popen[bytes], float]) -> None:
    """SIGTERM to all at once, then SIGKILL to each still running ``grace`` seconds later.

    All at once, not one after another: stopped in turn, a Flower that ignores Ctrl-C
    and a worker in soft shutdown added their waits, and on a loaded machine the demo
    took over a minute to exit.
    """
    for process, _ in stops:
        if process.poll() is None:
            process.terminate()
    start = time.monotonic()
    for process, grace in stops:
        try:
            process.wait(timeout=max(0.0, start + grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _local_key_file(logs: Path) -> Path:
    """A Fernet key for local runs, made once and kept, so earlier runs' messages still open."""
    path = logs / "pii-keys"
    if not path.exists():
        logs.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(Fernet.generate_key().decode() + "\n", encoding="ascii")
    return path


def _wait_http(url: str, what: str, logs: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not start within {timeout:g}s; see {logs}/")


if __name__ == "__main__":
    sys.exit(main())
