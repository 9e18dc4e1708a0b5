"""The dead letters and what to do with them: ``dead``, ``replay``, ``parked``."""

from __future__ import annotations

import sys

import click

from worker.adapters.store.dead_messages import list_dead_messages, publisher, requeue_dead_messages
from worker.adapters.store.views import dead_jobs, list_dead_entries
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
    receipt_keys_argument,
    state_text,
)
from worker.cli.operations import replay as replay_jobs
from worker.cli.operations import replay_reason


@click.command()
@click.option("--reason", help="Only jobs whose last failure had this reason.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def dead(reason: str | None, limit: int, as_json: bool) -> None:
    """List jobs that failed for good, and malformed ingress entries: the dead letters."""
    client = ledger_redis()
    shown = 0
    for job, record in dead_jobs(client, reason=reason, limit=limit):
        error = record.get("last_error") or {}
        what = "cancel_failed" if record["failed"] == "cancel" else "failed"
        emit(
            {"kind": "job", **record},
            as_json=as_json,
            text=f"{job_name(job)}  {state_text(what)}  {failure_text(error)}",
        )
        shown += 1
    for entry in list_dead_entries(client, limit):
        if reason is not None and entry.get("reason") != reason:
            continue
        where = f"{entry.get('imp_uid') or '-'}  ingress {entry.get('entry_id')}"
        emit({"kind": "ingress", **entry}, as_json=as_json, text=f"{where}: {entry.get('reason')}")
        shown += 1
    if not shown:
        sys.exit(EXIT_NOT_FOUND)


@click.command()
@receipt_keys_argument
@imp_uid_option
@click.option(
    "--reason", help="Replay every failed job, of every kind, whose last failure had this reason."
)
@click.option(
    "--identifier-stdin",
    "identifier_stdin",
    is_flag=True,
    help="Read a corrected identifier from standard input (asked for, hidden, on a "
    "terminal). The safe way: it stays out of ps and shell history.",
)
@click.option(
    "--identifier",
    help="A corrected identifier, in argv (visible in ps and shell history: "
    "prefer --identifier-stdin).",
)
@click.option("--identifier-type", help="Its type, if it changes.")
@click.option(
    "--new-id",
    "new_id",
    is_flag=True,
    help="External receipts only: issue under <merchant_uid>-r1 (a V2 one's <payment_id>-r1), "
    "for an id the provider will not issue under again (reason id_taken).",
)
@json_option
def replay(
    *,
    receipt_keys: tuple[str, ...],
    imp_uid: bool,
    reason: str | None,
    identifier_stdin: bool,
    identifier: str | None,
    identifier_type: str | None,
    new_id: bool,
    as_json: bool,
) -> None:
    """Re-enqueue failed jobs after the cause is fixed (a corrected identifier, credentials).

    RECEIPT_KEYS are iamport:<imp_uid>, iamport-external:<merchant_uid>,
    portone:<payment_id>, or bare imp_uids.
    A failed issue is sent again from its kept payload (an external receipt's too; after
    a partial refund, for the balance it left); a cancellation that failed for good
    (cancel_failed) is sent again as it was.
    """
    if not receipt_keys and reason is None:
        raise click.UsageError("name receipt keys (or imp_uids), or --reason")
    if identifier_stdin:
        if identifier is not None:
            raise click.UsageError("give --identifier-stdin or --identifier, not both")
        identifier = _read_identifier()
    corrections = {
        key: value
        for key, value in {"identifier": identifier, "identifier_type": identifier_type}.items()
        if value is not None
    }
    if corrections and len(receipt_keys) != 1:
        raise click.UsageError("a correction applies to exactly one job")
    client = ledger_redis()
    named = [named_job(name, imp_uid=imp_uid) for name in receipt_keys]
    targets = named or replay_reason(client, reason or "")
    replayed = 0
    outcomes = replay_jobs(
        client, celery_app(), targets, corrections=corrections or None, new_id=new_id
    )
    for outcome in outcomes:
        item = {**job_ids(outcome.job), "task_id": outcome.task_id, "skipped": outcome.skipped}
        name = job_name(outcome.job)
        text = (
            f"{name}: replayed as task {outcome.task_id}"
            if outcome.task_id
            else f"{name}: skipped ({outcome.skipped})"
        )
        if outcome.issued_as is not None:
            item["issued_as"] = outcome.issued_as.receipt_key
            text += f", issued as {outcome.issued_as.receipt_key}"
        emit(item, as_json=as_json, text=text)
        replayed += outcome.task_id is not None
    if replayed == 0:
        sys.exit(1)


def _read_identifier() -> str:
    """The identifier from standard input: a hidden prompt on a terminal, else one line."""
    if sys.stdin.isatty():
        value = click.prompt("Corrected identifier", hide_input=True, err=True)
    else:
        value = sys.stdin.readline()
    value = str(value).strip()
    if not value:
        raise click.UsageError("--identifier-stdin read no identifier")
    return value


# The command keeps the name users know ("parked"); in code these are dead messages, and
# "park" is a job's long retry wait in the ledger.
@click.command("parked")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--requeue", is_flag=True, help="Push every readable one back to its queue.")
@json_option
def dead_messages(limit: int, requeue: bool, as_json: bool) -> None:
    """List messages the worker could not run (unknown task, unreadable), or requeue them."""
    client = ledger_redis()
    if requeue:
        # On a Redis broker back onto the queue's list; on RabbitMQ, published.
        moved = requeue_dead_messages(
            client, None if load_config().broker_is_redis else publisher(celery_app())
        )
        emit({"requeued": moved}, as_json=as_json, text=f"requeued {moved}")
        return
    for record in list_dead_messages(client, limit):
        shown = {key: value for key, value in record.items() if key not in {"envelope", "raw"}}
        emit(
            shown,
            as_json=as_json,
            text=f"{shown.get('parked_at')}  {shown.get('id')}  {shown.get('reason')}",
        )
