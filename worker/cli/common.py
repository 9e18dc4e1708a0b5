"""What every ``cashreceipt`` command shares: the exit codes, ``--json``, the settings, Redis."""

from __future__ import annotations

import json
import logging
from importlib.metadata import version
from types import ModuleType
from typing import Any

import click
from celery import Celery

from worker.adapters.observe.logs import setup_process_logging
from worker.adapters.store.redis_client import redis_client
from worker.celery import app
from worker.config.load import load_celeryconfig
from worker.core.masking import one_line
from worker.core.types import JobKey

#: Exit codes (README, "Operator tools").
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_CHECKED = 1, 2, 3, 4

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")


def named_job(name: str, *, imp_uid: bool) -> JobKey:
    """The job a command's argument names: a receipt key when a known prefix starts it
    (``iamport:``, ``iamport-external:``, ``portone:``), else, as before receipt keys, a
    V1 payment's imp_uid; ``--imp-uid`` reads any string as one."""
    job = None if imp_uid else JobKey.parse(name)
    return job if job is not None else JobKey.payment(name)


#: Every command that names jobs takes receipt keys, or (``--imp-uid``) imp_uids: one
#: (``status``, ``settle``) or any number (``replay``, ``reconcile``).
receipt_key_argument = click.argument("receipt_key")
receipt_keys_argument = click.argument("receipt_keys", nargs=-1)
imp_uid_option = click.option(
    "--imp-uid",
    "imp_uid",
    is_flag=True,
    help="Read each argument as a V1 payment's imp_uid, whatever prefix it has.",
)


def job_name(job: JobKey) -> str:
    """How a line of text names a job: a V1 payment by its imp_uid, as before receipt keys;
    any other by its receipt key."""
    return one_line(job.imp_uid or job.receipt_key)


def job_ids(job: JobKey) -> dict[str, str | None]:
    """How a JSON line names a job: ``imp_uid`` (null but for a V1 payment) and
    ``receipt_key``."""
    return {"imp_uid": job.imp_uid, "receipt_key": job.receipt_key}


def emit(item: dict[str, Any], *, as_json: bool, text: str) -> None:
    """One result: ``item`` as a JSON line with ``--json``, else ``text``."""
    if as_json:
        click.echo(json.dumps(item, ensure_ascii=False))
    else:
        click.echo(text)


def load_config() -> ModuleType:
    """The settings (read from the environment now); a bad one exits 2 with its message."""
    conf = load_celeryconfig()
    # What the code under a command warns about goes to stderr masked, in
    # LOG_FORMAT, never through logging's bare last-resort handler.
    setup_process_logging(
        conf, level=logging.WARNING, text="cashreceipt: %(levelname)s: %(message)s"
    )
    return conf


def ledger_redis() -> Any:
    """The Redis of the ledger and the events (REDIS_URL); untyped, as redis-py's replies are."""
    return redis_client(load_config().ledger_backend_url)


def celery_app() -> Celery:
    """The worker's Celery app, for a command that sends a task or builds the runtime."""
    # Importing it reads no setting: its first use of one does, so --help and --version run
    # with none, and a bad setting is said by main() in one line (exit 2).
    return app


def failure_text(error: dict[str, Any]) -> str:
    """A job's last error, in one phrase."""
    return f"{error.get('reason')}: HTTP {error.get('status')} {error.get('message')}"


def state_text(state: str) -> str:
    """A job's state, coloured by what it means (on a terminal only)."""
    colour = {
        "issued": "green",
        "failed": "red",
        "cancel_failed": "red",
        "cancelled": "yellow",
    }.get(state)
    return click.style(state, fg=colour) if colour else state


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"cashreceipt {version('cashreceipt')}")
        ctx.exit()


def version_option() -> click.Option:
    """``--version``: the installed package's version, then exit 0, before anything else is
    parsed or read (an argument left out, the settings)."""
    return click.Option(
        ["--version"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_show_version,
        help="Show the version and exit.",
    )


class CommandLine(click.Group):
    """The ``cashreceipt`` group: every command added to it gets ``--version``, as it has."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(version_option())
        super().add_command(cmd, name)
