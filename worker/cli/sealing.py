"""``reseal``: every sealed payload the store keeps, under the newest key.

Run after the new key went first in ``PII_ENCRYPTION_KEYS`` everywhere, with the old
keys still configured; once it reports nothing unreadable and nothing left behind,
the old keys can be dropped (README, "Keys and rotation").
"""

from __future__ import annotations

import sys

import click

from worker.adapters.privacy.sealing import Sealer, SealingUnavailable
from worker.adapters.store.reseal import reseal as reseal_store
from worker.cli.common import EXIT_NOT_FOUND, emit, json_option, ledger_redis, load_config


@click.command()
@json_option
def reseal(as_json: bool) -> None:
    """Re-seal every kept payload (ledger records, parked messages) under the newest key.

    Exits 1 when something could not be re-sealed: a payload no configured key opens
    (each is listed by imp_uid), or a record workers kept changing (run it again).
    """
    sealer = Sealer.from_conf(load_config())
    if not sealer.enabled:
        raise SealingUnavailable("nothing to re-seal with: no key in PII_ENCRYPTION_KEYS")
    done = reseal_store(ledger_redis(), sealer)
    for where in done.unreadable:
        emit(
            {"unreadable": where},
            as_json=as_json,
            text=f"{where}: sealed with no configured key; not re-sealed",
        )
    for imp_uid in done.busy:
        emit({"busy": imp_uid}, as_json=as_json, text=f"{imp_uid}: changing; run again")
    counts = {
        "records": done.records,
        "parked": done.parked,
        "unchanged": done.unchanged,
        "unreadable": len(done.unreadable),
        "busy": len(done.busy),
    }
    emit(
        counts,
        as_json=as_json,
        text=(
            f"re-sealed {done.records} ledger record(s) and {done.parked} parked message(s); "
            f"{done.unchanged} already under the newest key; {len(done.unreadable)} unreadable, "
            f"{len(done.busy)} left to run again"
        ),
    )
    if not done.complete:
        sys.exit(EXIT_NOT_FOUND)
