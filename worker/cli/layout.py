"""``cashreceipt migrate-layout``: bring the Redis data to the key layout of this release."""

from __future__ import annotations

import dataclasses

import click

from worker.adapters.store.keys import LAYOUT_VERSION
from worker.adapters.store.layout import migrate
from worker.cli.common import emit, json_option, ledger_redis, load_config


@click.command("migrate-layout")
@click.option(
    "--rescan",
    is_flag=True,
    help="Scan every key even when the data says it is migrated (after an older producer ran).",
)
@json_option
def migrate_layout(rescan: bool, as_json: bool) -> None:
    """Move the keys of an earlier layout to this release's (each worker also does at start).

    Safe to run again and beside running workers of this release: each key moves in
    one script, once. With many payments, run it before the first worker starts.
    """
    moved = migrate(ledger_redis(), stream=load_config().result_stream, rescan=rescan)
    emit(
        {"layout": LAYOUT_VERSION, **dataclasses.asdict(moved)},
        as_json=as_json,
        text=f"layout {LAYOUT_VERSION}: moved {moved.index_members} index members, "
        f"{moved.side_keys} side keys, {moved.status_pointers} status pointers, "
        f"{moved.markers} second markers"
        + ("" if moved.scanned else " (already migrated: only the old indexes were checked)"),
    )
