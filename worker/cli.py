"""``cashreceipt``: the operator's and the integrator's command line.

    cashreceipt enqueue '{"imp_uid": "imp_1", "identifier": "010-1234-5678"}'
    cashreceipt enqueue --file payload.json          (or - for standard input)
    cashreceipt enqueue --imp-uid imp_1 --identifier 01012345678 --identifier-type phone
    cashreceipt status imp_1                  (the ledger record, masked, and the latest event)
    cashreceipt stuck [--older-than SECONDS]  (jobs overdue in a non-terminal state)
    cashreceipt settle imp_1                  (look the receipt up at i'mport, settle the job)
    cashreceipt parked [--limit N] [--requeue]

Exit codes: 0 done, 1 nothing found, 2 bad input or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from worker.schemas import InvalidPayload

_FLAG_FIELDS = (
    "imp_uid",
    "merchant_uid",
    "identifier",
    "identifier_type",
    "type",
    "company_tel",
    "company_name",
    "corp_reg_no",
    "buyer_name",
    "buyer_email",
    "buyer_tel",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, separate so that tests and docs can inspect it."""
    parser = argparse.ArgumentParser(
        prog="cashreceipt", description="Issue Korean cash receipts through i'mport, exactly once."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    enqueue = commands.add_parser(
        "enqueue", help="validate a payment-confirmed payload and enqueue its receipt"
    )
    enqueue.add_argument("payload", nargs="?", help="the payload as a JSON object")
    enqueue.add_argument("--file", help="read the JSON payload from a file, or - for stdin")
    for name in _FLAG_FIELDS:
        enqueue.add_argument("--" + name.replace("_", "-"), dest=name)
    enqueue.add_argument("--tax-free", dest="tax_free", type=int)

    status = commands.add_parser("status", help="show the latest outcome of a payment")
    status.add_argument("imp_uid")

    stuck = commands.add_parser("stuck", help="list jobs stuck in a non-terminal state")
    stuck.add_argument("--older-than", type=float, default=60.0, help="seconds overdue")
    stuck.add_argument("--limit", type=int, default=100)

    settle = commands.add_parser("settle", help="force a lookup at i'mport and settle the job")
    settle.add_argument("imp_uid")

    parked = commands.add_parser(
        "parked", help="list messages the worker could not run (unknown task, unreadable)"
    )
    parked.add_argument("--limit", type=int, default=20)
    parked.add_argument(
        "--requeue", action="store_true", help="push every readable one back to its queue"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cashreceipt`` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "enqueue":
            return _enqueue(args)
        if args.command == "parked":
            return _parked(args.limit, requeue=args.requeue)
        if args.command == "stuck":
            return _stuck(args.older_than, args.limit)
        if args.command == "settle":
            return _settle(args.imp_uid)
        return _status(args.imp_uid)
    except InvalidPayload as error:
        print(json.dumps({"error": "invalid_payload", "fields": error.errors}), file=sys.stderr)
        return 2


def _enqueue(args: argparse.Namespace) -> int:
    from worker.producer import enqueue_issue  # noqa: PLC0415 (loads the app's configuration)

    payload = _payload_from(args)
    task_id = enqueue_issue(payload)
    print(json.dumps({"task_id": task_id, "imp_uid": payload.get("imp_uid")}))
    return 0


def _payload_from(args: argparse.Namespace) -> dict[str, Any]:
    flags = {name: getattr(args, name) for name in (*_FLAG_FIELDS, "tax_free")}
    given = {name: value for name, value in flags.items() if value is not None}
    if args.payload is None and args.file is None:
        return given
    if args.payload is not None and args.file is not None:
        raise InvalidPayload({"_payload": ["Give the payload inline or with --file, not both."]})
    text = args.payload
    if args.file is not None:
        with sys.stdin if args.file == "-" else open(args.file, encoding="utf-8") as stream:
            text = stream.read()
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidPayload({"_payload": [f"Not valid JSON ({error.msg})."]}) from None
    if not isinstance(payload, dict):
        raise InvalidPayload({"_payload": ["Must be a JSON object."]})
    return {**payload, **given}


def _redis() -> tuple[Any, Any]:
    import redis  # noqa: PLC0415

    from worker.settings import load_celeryconfig  # noqa: PLC0415

    celeryconfig = load_celeryconfig()
    return redis.Redis.from_url(celeryconfig.broker_url), celeryconfig


def _parked(limit: int, *, requeue: bool) -> int:
    from worker.parking import list_parked, requeue_parked  # noqa: PLC0415

    client, _ = _redis()
    if requeue:
        print(json.dumps({"requeued": requeue_parked(client)}))
        return 0
    for record in list_parked(client, limit):
        shown = {key: value for key, value in record.items() if key not in {"envelope", "raw"}}
        print(json.dumps(shown, ensure_ascii=False))
    return 0


def _status(imp_uid: str) -> int:
    from worker.events import latest_event  # noqa: PLC0415
    from worker.ledger import ledger_key, shown_record  # noqa: PLC0415

    client, celeryconfig = _redis()
    raw = client.hgetall(ledger_key(imp_uid))
    event = latest_event(client, stream=celeryconfig.result_stream, imp_uid=imp_uid)
    if not raw and event is None:
        print(json.dumps({"imp_uid": imp_uid, "status": "unknown"}))
        return 1
    shown = {"imp_uid": imp_uid, "ledger": shown_record(raw) if raw else None, "event": event}
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    return 0


def _stuck(older_than: float, limit: int) -> int:
    from worker.ledger import ledger_key, shown_record  # noqa: PLC0415
    from worker.ledger import stuck as stuck_jobs  # noqa: PLC0415

    client, _ = _redis()
    for imp_uid in stuck_jobs(client, older_than=older_than, limit=limit):
        record = shown_record(client.hgetall(ledger_key(imp_uid)))
        print(json.dumps({"imp_uid": imp_uid, **record}, ensure_ascii=False))
    return 0


def _settle(imp_uid: str) -> int:
    from worker.celery import app  # noqa: PLC0415
    from worker.runtime import get_runtime  # noqa: PLC0415
    from worker.service import settle  # noqa: PLC0415

    outcome = settle(get_runtime(app.conf), imp_uid)
    print(json.dumps({"imp_uid": imp_uid, "outcome": outcome}))
    return 0 if outcome != "unknown" else 1


if __name__ == "__main__":
    sys.exit(main())
