"""``reconcile``: does i'mport agree with the ledger?"""

from __future__ import annotations

import sys

import click

from worker.adapters.store.views import ledger_payments
from worker.celery.runtime import get_runtime
from worker.cli.common import (
    EXIT_NOT_CHECKED,
    EXIT_NOT_FOUND,
    celery_app,
    emit,
    json_option,
    ledger_redis,
)
from worker.cli.operations import Mismatch
from worker.cli.operations import reconcile as compare


@click.command()
@click.argument("imp_uids", nargs=-1)
@click.option("--limit", type=int, default=10_000, show_default=True)
@json_option
def reconcile(imp_uids: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Compare the ledger with i'mport (every record, or the given ones).

    Exit 1 on a mismatch; else 4 if i'mport did not answer for some payment
    (not checked, so not known to be clean).
    """
    client = ledger_redis()
    runtime = get_runtime(celery_app().conf)
    targets = list(imp_uids) or ledger_payments(client, limit=limit)
    mismatches = not_checked = 0
    for found in compare(client, runtime.client, targets):
        if isinstance(found, Mismatch):
            mismatches += 1
            emit(
                {"imp_uid": found.imp_uid, "ledger": found.ledger, "iamport": found.iamport},
                as_json=as_json,
                text=f"{found.imp_uid}: ledger {found.ledger}, i'mport {found.iamport}",
            )
            continue
        not_checked += 1
        status = f", HTTP {found.status}" if found.status is not None else ""
        emit(
            {
                "imp_uid": found.imp_uid,
                "ledger": found.ledger,
                "not_checked": found.reason,
                "status": found.status,
            },
            as_json=as_json,
            text=f"{found.imp_uid}: ledger {found.ledger}, not checked ({found.reason}{status})",
        )
    # On stderr in both modes: stdout stays one line per payment to look at.
    click.echo(
        f"{len(targets) - not_checked} checked, {mismatches} mismatched, {not_checked} not checked",
        err=True,
    )
    if mismatches:
        sys.exit(EXIT_NOT_FOUND)
    if not_checked:
        sys.exit(EXIT_NOT_CHECKED)
