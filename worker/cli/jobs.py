"""Sending and looking at jobs: ``enqueue``, ``status``, ``tail``, ``stuck``, ``settle``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from worker.adapters.store.events import latest_event, read_events
from worker.adapters.store.views import job_history, shown_job, stuck_jobs
from worker.celery.producer import enqueue_issue
from worker.celery.runtime import get_runtime
from worker.cli.common import (
    EXIT_NOT_FOUND,
    celery_app,
    emit,
    failure_text,
    imp_uid_option,
    job_ids,
    job_name,
    json_option,
    ledger_redis,
    load_config,
    named_job,
    receipt_key_argument,
    state_text,
)
from worker.core.events import event_kind
from worker.core.schemas import InvalidPayload
from worker.core.settling import settle as settle_job

_FIELDS = (
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


def _field_options(command: Any) -> Any:
    """One option per payload field: --imp-uid, --identifier, ..."""
    for name in reversed(_FIELDS):
        command = click.option("--" + name.replace("_", "-"), name)(command)
    return command


@click.command()
@click.argument("payload", required=False)
@_field_options
@click.option("--file", "path", help="Read the JSON payload from a file, or - for stdin.")
@click.option("--tax-free", type=int, help="The tax-free part of the amount.")
@json_option
@click.pass_context
def enqueue(
    ctx: click.Context,
    /,
    payload: str | None,
    path: str | None,
    tax_free: int | None,
    as_json: bool,
    **_fields: str | None,
) -> None:
    """Validate a payment-confirmed payload and enqueue its receipt.

    The payload comes as a JSON argument, from --file, or from the field
    options (--imp-uid, --identifier, ...); options override the JSON.
    """
    given = {name: ctx.params.get(name) for name in _FIELDS}
    fields = {name: value for name, value in given.items() if value is not None}
    if tax_free is not None:
        fields["tax_free"] = tax_free
    data = _payload(payload, path, fields)
    task_id = enqueue_issue(data, app=celery_app())
    emit(
        {"task_id": task_id, "imp_uid": data.get("imp_uid")},
        as_json=as_json,
        text=f"enqueued {data.get('imp_uid')} as task {task_id}",
    )


def _payload(text: str | None, path: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    if text is not None and path is not None:
        raise InvalidPayload({"_payload": ["Give the payload inline or with --file, not both."]})
    if path is not None:
        with click.open_file(path, encoding="utf-8") as stream:
            text = stream.read()
    if text is None:
        return fields
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InvalidPayload({"_payload": [f"Not valid JSON ({error.msg})."]}) from None
    if not isinstance(data, dict):
        raise InvalidPayload({"_payload": ["Must be a JSON object."]})
    return {**data, **fields}


@click.command()
@receipt_key_argument
@imp_uid_option
@json_option
def status(receipt_key: str, imp_uid: bool, as_json: bool) -> None:
    """Show a job's ledger record (masked), its history and its latest event.

    RECEIPT_KEY is iamport:<imp_uid>, iamport-external:<merchant_uid>, portone:<payment_id>,
    or a bare imp_uid.
    """
    job = named_job(receipt_key, imp_uid=imp_uid)
    name = job_name(job)
    client = ledger_redis()
    record = shown_job(client, job)
    event = latest_event(client, stream=load_config().result_stream, job=job)
    if record is None and event is None:
        emit({**job_ids(job), "status": "unknown"}, as_json=as_json, text=f"{name}: unknown")
        sys.exit(1)
    ledger: dict[str, Any] = record or {}
    history = job_history(client, job)
    if as_json:
        shown = {
            **job_ids(job),
            "ledger": ledger or None,
            "history": history,
            "event": event,
        }
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    click.echo(f"{click.style(name, bold=True)}  {state_text(ledger.get('state', 'no record'))}")
    for key in ("task_id", "op", "attempts", "updated_at", "next_attempt_at", "lease_until"):
        if key in ledger:
            click.echo(f"  {key:<16}{ledger[key]}")
    error = ledger.get("last_error") or {}
    if error:
        click.echo(f"  {'last_error':<16}{failure_text(error)}")
    for entry in history:
        outcome = entry.get("outcome")
        then = f", then {entry['then']}" if entry.get("then") else ""
        click.echo(
            f"  {'history':<16}attempt {entry.get('attempt')} {entry.get('op')}: {outcome}{then}"
        )
    if event:
        click.echo(f"  {'latest event':<16}{event['type']} ({event['id']})")


@click.command()
@click.option("--from-start", is_flag=True, help="Begin with the oldest event kept.")
@click.option("--count", type=int, default=0, help="Stop after this many events (0: follow).")
@json_option
def tail(from_start: bool, count: int, as_json: bool) -> None:
    """Follow the result events (they carry no personal data)."""
    client = ledger_redis()
    stream = load_config().result_stream
    last = "0" if from_start else "$"
    seen = 0
    while count == 0 or seen < count:
        for event in read_events(client, stream=stream, after=last, block_ms=1000, count=100):
            last = event["id"]
            emit(event, as_json=as_json, text=_event_line(event["type"], event["data"]))
            seen += 1
            if count and seen >= count:
                return


def _event_line(event_type: str, data: dict[str, Any]) -> str:
    kind = event_kind(event_type)
    line = f"{data.get('occurred_at')}  {state_text(kind):<20} {data.get('imp_uid')}"
    if data.get("duplicate"):
        line += " (duplicate)"
    if "error" in data:
        error = data["error"]
        line += f"  {error.get('reason')}: {error.get('message')}"
    return line


@click.command()
@click.option("--older-than", type=float, default=60.0, show_default=True, help="Seconds overdue.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def stuck(older_than: float, limit: int, as_json: bool) -> None:
    """List jobs overdue in a non-terminal state (no worker runs them, or they keep failing)."""
    client = ledger_redis()
    found = False
    for job, record in stuck_jobs(client, older_than=older_than, limit=limit):
        found = True
        emit(
            {**job_ids(job), **record},
            as_json=as_json,
            text=f"{job_name(job)}  {record.get('state')} {record.get('op', 'issue')}"
            f"  attempts {record.get('attempts')}",
        )
    if not found:
        sys.exit(EXIT_NOT_FOUND)


@click.command()
@receipt_key_argument
@imp_uid_option
@json_option
def settle(receipt_key: str, imp_uid: bool, as_json: bool) -> None:
    """Look the receipt up at its provider now: adopt it, or hand the job back to be re-sent.

    RECEIPT_KEY is iamport:<imp_uid>, iamport-external:<merchant_uid>,
    portone:<payment_id>, or a bare imp_uid.
    """
    job = named_job(receipt_key, imp_uid=imp_uid)
    runtime = get_runtime(celery_app().conf)
    outcome = settle_job(
        job,
        store=runtime.ledger,
        client=runtime.provider_for(job),
        events=runtime.events,
        settle_seconds=runtime.settle_seconds_for(job),
    )
    emit({**job_ids(job), "outcome": outcome}, as_json=as_json, text=f"{job_name(job)}: {outcome}")
    if outcome == "unknown":
        sys.exit(1)
