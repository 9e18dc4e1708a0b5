"""``reconcile``: does i'mport agree with the ledger?"""

from __future__ import annotations

import sys

import click

from worker.adapters.store.views import ledger_jobs
from worker.celery.runtime import get_runtime
from worker.cli.common import (
    EXIT_NOT_CHECKED,
    EXIT_NOT_FOUND,
    celery_app,
    emit,
    imp_uid_option,
    job_ids,
    job_name,
    json_option,
    ledger_redis,
    named_job,
    receipt_keys_argument,
)
from worker.cli.operations import Mismatch
from worker.cli.operations import reconcile as compare


@click.command()
@receipt_keys_argument
@imp_uid_option
@click.option("--limit", type=int, default=10_000, show_default=True)
@json_option
def reconcile(receipt_keys: tuple[str, ...], imp_uid: bool, limit: int, as_json: bool) -> None:
    """Compare the ledger with the providers (every record, of every kind, or the given ones).

    RECEIPT_KEYS are iamport:<imp_uid>, iamport-external:<merchant_uid>, portone:<payment_id>,
    or bare imp_uids; an external receipt is looked up by its merchant_uid, a V2 one by its
    payment id. Exit 1 on a mismatch; else 4 if a provider did not answer for some job
    (not checked, so not known to be clean).
    """
    client = ledger_redis()
    runtime = get_runtime(celery_app().conf)
    named = [named_job(name, imp_uid=imp_uid) for name in receipt_keys]
    targets = named or ledger_jobs(client, limit=limit)
    if not named and len(targets) >= limit:
        click.echo(
            f"stopped at --limit {limit}: the ledger may hold more records; raise --limit "
            "to check them all",
            err=True,
        )
    mismatches = not_checked = 0
    for found in compare(client, runtime.provider_for, targets):
        name = job_name(found.job)
        if isinstance(found, Mismatch):
            mismatches += 1
            emit(
                {**job_ids(found.job), "ledger": found.ledger, "iamport": found.iamport},
                as_json=as_json,
                text=f"{name}: ledger {found.ledger}, i'mport {found.iamport}",
            )
            continue
        not_checked += 1
        status = f", HTTP {found.status}" if found.status is not None else ""
        emit(
            {
                **job_ids(found.job),
                "ledger": found.ledger,
                "not_checked": found.reason,
                "status": found.status,
            },
            as_json=as_json,
            text=f"{name}: ledger {found.ledger}, not checked ({found.reason}{status})",
        )
    # On stderr in both modes: stdout stays one line per job to look at.
    click.echo(
        f"{len(targets) - not_checked} checked, {mismatches} mismatched, {not_checked} not checked",
        err=True,
    )
    if mismatches:
        sys.exit(EXIT_NOT_FOUND)
    if not_checked:
        sys.exit(EXIT_NOT_CHECKED)
