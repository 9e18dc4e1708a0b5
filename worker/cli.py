"""``cashreceipt``: the operator's and the integrator's command line.

    cashreceipt enqueue '{"imp_uid": "imp_1", "identifier": "010-1234-5678"}'
    cashreceipt status imp_1          the ledger record (masked), its history, the latest event
    cashreceipt tail                  follow the result events
    cashreceipt stuck                 jobs overdue in a non-terminal state
    cashreceipt settle imp_1          look the receipt up at i'mport, settle the job
    cashreceipt dead [--reason R]     jobs that failed for good, and malformed ingress entries
    cashreceipt replay imp_1 ...      re-enqueue failed jobs (or --reason R), with corrections
    cashreceipt reconcile [imp_1 ...] compare the ledger with i'mport
    cashreceipt parked [--requeue]    messages the worker could not run
    cashreceipt ingress               read the ingress stream (see README)
    cashreceipt bench                 measure throughput and latency (see README)

Every command has ``--help``. ``--json`` prints JSON lines (one object per
line) instead of text. Colour is used only on a terminal, and never when
``NO_COLOR`` is set. Exit codes: 0 done, 1 nothing found or a mismatch, 2 bad
input or configuration, 3 Redis (or i'mport) could not be reached: try again,
4 (``reconcile``) no mismatch, but i'mport did not answer for some payment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import redis
from kombu.exceptions import OperationalError

from worker.errors import IamportError
from worker.keys import ledger_key
from worker.masking import mask_text
from worker.redis_client import redis_client
from worker.schemas import InvalidPayload
from worker.sealing import SealingUnavailable
from worker.urls import redact_url

#: Exit codes (README, "Operator tools").
EXIT_NOT_FOUND, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_CHECKED = 1, 2, 3, 4

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

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")


def _emit(item: dict[str, Any], *, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(item, ensure_ascii=False))
    else:
        click.echo(text)


def _config() -> Any:
    from worker.logs import setup_process_logging  # noqa: PLC0415
    from worker.settings import load_celeryconfig  # noqa: PLC0415 (reads the environment)

    conf = load_celeryconfig()
    # What the code under a command warns about goes to stderr masked, in
    # LOG_FORMAT, never through logging's bare last-resort handler.
    setup_process_logging(
        conf, level=logging.WARNING, text="cashreceipt: %(levelname)s: %(message)s"
    )
    return conf


def _redis() -> Any:
    return redis_client(_config().ledger_backend_url)


def _app() -> Any:
    from worker.celery import app  # noqa: PLC0415 (loads the configuration)

    return app


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Issue Korean cash receipts through i'mport, exactly once."""


def _field_options(command: Any) -> Any:
    """One option per payload field: --imp-uid, --identifier, ..."""
    for name in reversed(_FIELDS):
        command = click.option("--" + name.replace("_", "-"), name)(command)
    return command


@cli.command()
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
    from worker.producer import enqueue_issue  # noqa: PLC0415

    given = {name: ctx.params.get(name) for name in _FIELDS}
    fields = {name: value for name, value in given.items() if value is not None}
    if tax_free is not None:
        fields["tax_free"] = tax_free
    data = _payload(payload, path, fields)
    task_id = enqueue_issue(data, app=_app())
    _emit(
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


@cli.command()
@click.argument("imp_uid")
@json_option
def status(imp_uid: str, as_json: bool) -> None:
    """Show a payment's ledger record (masked), its history and its latest event."""
    from worker.events import latest_event  # noqa: PLC0415
    from worker.ledger import job_history, shown_record  # noqa: PLC0415

    client = _redis()
    raw = client.hgetall(ledger_key(imp_uid))
    event = latest_event(client, stream=_config().result_stream, imp_uid=imp_uid)
    if not raw and event is None:
        _emit(
            {"imp_uid": imp_uid, "status": "unknown"}, as_json=as_json, text=f"{imp_uid}: unknown"
        )
        sys.exit(1)
    ledger: dict[str, Any] = shown_record(raw) if raw else {}
    history = job_history(client, imp_uid)
    if as_json:
        shown = {"imp_uid": imp_uid, "ledger": ledger or None, "history": history, "event": event}
        click.echo(json.dumps(shown, ensure_ascii=False))
        return
    click.echo(f"{click.style(imp_uid, bold=True)}  {_state(ledger.get('state', 'no record'))}")
    for key in ("task_id", "op", "attempts", "updated_at", "next_attempt_at", "lease_until"):
        if key in ledger:
            click.echo(f"  {key:<16}{ledger[key]}")
    error = ledger.get("last_error") or {}
    if error:
        click.echo(f"  {'last_error':<16}{_failure(error)}")
    for entry in history:
        outcome = entry.get("outcome")
        then = f", then {entry['then']}" if entry.get("then") else ""
        click.echo(
            f"  {'history':<16}attempt {entry.get('attempt')} {entry.get('op')}: {outcome}{then}"
        )
    if event:
        click.echo(f"  {'latest event':<16}{event['type']} ({event['id']})")


def _failure(error: dict[str, Any]) -> str:
    return f"{error.get('reason')}: HTTP {error.get('status')} {error.get('message')}"


def _state(state: str) -> str:
    colour = {
        "issued": "green",
        "failed": "red",
        "cancel_failed": "red",
        "cancelled": "yellow",
    }.get(state)
    return click.style(state, fg=colour) if colour else state


@cli.command()
@click.option("--from-start", is_flag=True, help="Begin with the oldest event kept.")
@click.option("--count", type=int, default=0, help="Stop after this many events (0: follow).")
@json_option
def tail(from_start: bool, count: int, as_json: bool) -> None:
    """Follow the result events (they carry no personal data)."""
    client = _redis()
    stream = _config().result_stream
    last = "0" if from_start else "$"
    seen = 0
    while count == 0 or seen < count:
        batch = client.xread({stream: last}, block=1000, count=100) or []
        for _, entries in batch:
            for entry_id, fields in entries:
                last = entry_id
                event = {k.decode(): v.decode() for k, v in fields.items()}
                data = json.loads(event["data"])
                _emit(
                    {"id": entry_id.decode(), "type": event["type"], "data": data},
                    as_json=as_json,
                    text=_event_line(event["type"], data),
                )
                seen += 1
                if count and seen >= count:
                    return


def _event_line(event_type: str, data: dict[str, Any]) -> str:
    kind = event_type.removeprefix("cash_receipt.")
    line = f"{data.get('occurred_at')}  {_state(kind):<20} {data.get('imp_uid')}"
    if data.get("duplicate"):
        line += " (duplicate)"
    if "error" in data:
        error = data["error"]
        line += f"  {error.get('reason')}: {error.get('message')}"
    return line


@cli.command()
@click.option("--older-than", type=float, default=60.0, show_default=True, help="Seconds overdue.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def stuck(older_than: float, limit: int, as_json: bool) -> None:
    """List jobs overdue in a non-terminal state (no worker runs them, or they keep failing)."""
    from worker.ledger import shown_record  # noqa: PLC0415
    from worker.ledger import stuck as stuck_jobs  # noqa: PLC0415

    client = _redis()
    found = stuck_jobs(client, older_than=older_than, limit=limit)
    for imp_uid in found:
        record = shown_record(client.hgetall(ledger_key(imp_uid)))
        _emit(
            {"imp_uid": imp_uid, **record},
            as_json=as_json,
            text=f"{imp_uid}  {record.get('state')} {record.get('op', 'issue')}"
            f"  attempts {record.get('attempts')}",
        )
    if not found:
        sys.exit(EXIT_NOT_FOUND)


@cli.command()
@click.argument("imp_uid")
@json_option
def settle(imp_uid: str, as_json: bool) -> None:
    """Look the receipt up at i'mport now: adopt it, or hand the job back to be re-sent."""
    from worker.runtime import get_runtime  # noqa: PLC0415
    from worker.service import settle as settle_job  # noqa: PLC0415

    runtime = get_runtime(_app().conf)
    outcome = settle_job(
        imp_uid,
        ledger=runtime.ledger,
        client=runtime.client,
        events=runtime.events,
        settle_seconds=runtime.settle_seconds,
    )
    _emit({"imp_uid": imp_uid, "outcome": outcome}, as_json=as_json, text=f"{imp_uid}: {outcome}")
    if outcome == "unknown":
        sys.exit(1)


@cli.command()
@click.option("--reason", help="Only jobs whose last failure had this reason.")
@click.option("--limit", type=int, default=100, show_default=True)
@json_option
def dead(reason: str | None, limit: int, as_json: bool) -> None:
    """List jobs that failed for good, and malformed ingress entries: the dead letters."""
    from worker.operations import dead_jobs  # noqa: PLC0415

    client = _redis()
    shown = 0
    for job in dead_jobs(client, reason=reason, limit=limit):
        error = job.get("last_error") or {}
        what = "cancel_failed" if job["failed"] == "cancel" else "failed"
        _emit(
            {"kind": "job", **job},
            as_json=as_json,
            text=f"{job['imp_uid']}  {_state(what)}  {_failure(error)}",
        )
        shown += 1
    for entry in _dead_entries(client, limit):
        if reason is not None and entry.get("reason") != reason:
            continue
        where = f"{entry.get('imp_uid') or '-'}  ingress {entry.get('entry_id')}"
        _emit({"kind": "ingress", **entry}, as_json=as_json, text=f"{where}: {entry.get('reason')}")
        shown += 1
    if not shown:
        sys.exit(EXIT_NOT_FOUND)


def _dead_entries(client: Any, limit: int) -> list[dict[str, Any]]:
    try:
        from worker.ingress import list_dead_entries  # noqa: PLC0415
    except ImportError:
        return []
    entries: list[dict[str, Any]] = list_dead_entries(client, limit)
    return entries


@cli.command()
@click.argument("imp_uids", nargs=-1)
@click.option("--reason", help="Replay every failed job whose last failure had this reason.")
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
@json_option
def replay(
    *,
    imp_uids: tuple[str, ...],
    reason: str | None,
    identifier_stdin: bool,
    identifier: str | None,
    identifier_type: str | None,
    as_json: bool,
) -> None:
    """Re-enqueue failed jobs after the cause is fixed (a corrected identifier, credentials).

    A cancellation that failed for good (cancel_failed) is sent again as it was.
    """
    from worker.operations import replay as replay_jobs  # noqa: PLC0415
    from worker.operations import replay_reason  # noqa: PLC0415

    if not imp_uids and reason is None:
        raise click.UsageError("name imp_uids, or --reason")
    if identifier_stdin:
        if identifier is not None:
            raise click.UsageError("give --identifier-stdin or --identifier, not both")
        identifier = _read_identifier()
    corrections = {
        key: value
        for key, value in {"identifier": identifier, "identifier_type": identifier_type}.items()
        if value is not None
    }
    if corrections and len(imp_uids) != 1:
        raise click.UsageError("a correction applies to exactly one imp_uid")
    client = _redis()
    targets = list(imp_uids) or replay_reason(client, reason or "")
    replayed = 0
    for outcome in replay_jobs(client, _app(), targets, corrections=corrections or None):
        item = {"imp_uid": outcome.imp_uid, "task_id": outcome.task_id, "skipped": outcome.skipped}
        text = (
            f"{outcome.imp_uid}: replayed as task {outcome.task_id}"
            if outcome.task_id
            else f"{outcome.imp_uid}: skipped ({outcome.skipped})"
        )
        _emit(item, as_json=as_json, text=text)
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


@cli.command()
@click.argument("imp_uids", nargs=-1)
@click.option("--limit", type=int, default=10_000, show_default=True)
@json_option
def reconcile(imp_uids: tuple[str, ...], limit: int, as_json: bool) -> None:
    """Compare the ledger with i'mport (every record, or the given ones).

    Exit 1 on a mismatch; else 4 if i'mport did not answer for some payment
    (not checked, so not known to be clean).
    """
    from worker.operations import Mismatch, ledger_payments  # noqa: PLC0415
    from worker.operations import reconcile as compare  # noqa: PLC0415
    from worker.runtime import get_runtime  # noqa: PLC0415

    client = _redis()
    runtime = get_runtime(_app().conf)
    targets = list(imp_uids) or ledger_payments(client, limit=limit)
    mismatches = not_checked = 0
    for found in compare(client, runtime.client, targets):
        if isinstance(found, Mismatch):
            mismatches += 1
            _emit(
                {"imp_uid": found.imp_uid, "ledger": found.ledger, "iamport": found.iamport},
                as_json=as_json,
                text=f"{found.imp_uid}: ledger {found.ledger}, i'mport {found.iamport}",
            )
            continue
        not_checked += 1
        status = f", HTTP {found.status}" if found.status is not None else ""
        _emit(
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


@cli.command()
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--requeue", is_flag=True, help="Push every readable one back to its queue.")
@json_option
def parked(limit: int, requeue: bool, as_json: bool) -> None:
    """List messages the worker could not run (unknown task, unreadable), or requeue them."""
    from worker.dead_messages import list_dead_messages, publisher, requeue_dead_messages  # noqa: PLC0415

    client = _redis()
    if requeue:
        # On a Redis broker back onto the queue's list; on RabbitMQ, published.
        moved = requeue_dead_messages(
            client, None if _config().broker_is_redis else publisher(_app())
        )
        _emit({"requeued": moved}, as_json=as_json, text=f"requeued {moved}")
        return
    for record in list_dead_messages(client, limit):
        shown = {key: value for key, value in record.items() if key not in {"envelope", "raw"}}
        _emit(
            shown,
            as_json=as_json,
            text=f"{shown.get('parked_at')}  {shown.get('id')}  {shown.get('reason')}",
        )


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def ingress(ctx: click.Context) -> None:
    """Read the ingress stream and enqueue what it says (options: cashreceipt ingress --help)."""
    from worker.ingress import main as ingress_main  # noqa: PLC0415

    sys.exit(ingress_main(list(ctx.args)))


@cli.command()
@click.option("-n", "--n", "n", default=1500, show_default=True, help="Events per drain run.")
@click.option(
    "--latency",
    "latencies",
    default="0,50,200",
    show_default=True,
    help="Sandbox latencies L to run at, in ms, comma-separated.",
)
@click.option(
    "--profile",
    "profiles",
    default="throughput,latency",
    show_default=True,
    help="Comma-separated: throughput, latency, scaleout, soak (soak is long).",
)
@click.option("--light-n", default=100, show_default=True, help="Events per light-load run.")
@click.option("--light-rate", default=10.0, show_default=True, help="Light-load events/s.")
@click.option("--scaleout-latency", default=1000, show_default=True, help="L of scaleout, ms.")
@click.option("--scaleout-n", default=1000, show_default=True, help="Events per scaleout run.")
@click.option("--soak-n", default=100_000, show_default=True, help="Events of the soak.")
@click.option("--soak-latency", default=0, show_default=True, help="L of the soak, ms.")
@click.option(
    "--env",
    "env_pairs",
    multiple=True,
    metavar="NAME=VALUE",
    help="A setting for our worker and the bare one alike (repeatable).",
)
@click.option(
    "--worker-args", default="", help="Extra `celery worker` arguments for both, e.g. '-P gevent'."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also save every measurement here, as JSON.",
)
@click.option(
    "--processes",
    type=int,
    default=None,
    help="Worker processes of ours and of the bare task per run [default: one per core].",
)
@click.option(
    "--repeat", default=2, show_default=True, help="Runs of each; the tables show medians."
)
@click.option("--no-progress", is_flag=True, help="No progress bars on stderr.")
def bench(  # noqa: PLR0917 (click passes every option positionally)
    n: int,
    latencies: str,
    profiles: str,
    light_n: int,
    light_rate: float,
    scaleout_latency: int,
    scaleout_n: int,
    soak_n: int,
    soak_latency: int,
    env_pairs: tuple[str, ...],
    worker_args: str,
    json_path: str | None,
    processes: int | None,
    repeat: int,
    no_progress: bool,
) -> None:
    """Measure the default worker against a bare Celery task and default prefork.

    Starts a private redis-server, the sandbox and the workers itself; needs
    nothing running. See the README's Performance section.
    """
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    try:
        from cashreceipt_bench import run  # noqa: PLC0415
    except ModuleNotFoundError as error:
        if error.name != "cashreceipt_bench":
            raise
        # The benchmark is its own distribution (bench/), kept out of the worker's wheel.
        sys.exit(BENCH_MISSING)

    chosen = tuple(p.strip() for p in profiles.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(run.PROFILES))
    if unknown:
        raise click.BadParameter(f"unknown profile {', '.join(unknown)}", param_hint="--profile")
    try:
        levels = tuple(int(part) for part in latencies.split(",") if part.strip())
        env = run.parse_env(env_pairs)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    options = run.Options(
        n=n,
        latencies=levels,
        profiles=chosen,
        light_n=light_n,
        light_rate=light_rate,
        scaleout_latency=scaleout_latency,
        scaleout_n=scaleout_n,
        soak_n=soak_n,
        soak_latency=soak_latency,
        env=env,
        worker_args=run.split_args(worker_args),
        json_path=Path(json_path) if json_path else None,
        processes=processes or os.cpu_count() or 1,
        repeat=repeat,
        progress=not no_progress,
    )
    try:
        run.run(options, out=sys.stdout)
    except run.BenchError as error:
        click.echo(f"bench: {error}", err=True)
        sys.exit(1)


#: `cashreceipt bench` where only the runtime is installed (`pip install cashreceipt`, the
#: worker image): one line, exit code 2, as any missing setting.
BENCH_MISSING = (
    "cashreceipt bench needs the benchmark, which is not installed: from a checkout of this "
    "repository, `pip install ./sandbox ./bench` (or `make install`)"
)

#: What a command may raise that is said in one line rather than a traceback.
_OURS = (
    click.ClickException,
    InvalidPayload,
    SealingUnavailable,
    IamportError,
    redis.RedisError,
    OperationalError,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cashreceipt`` console script: one line per failure, no traceback."""
    # https://no-color.org: set and not empty means no colour, even on a terminal.
    color = False if os.environ.get("NO_COLOR") else None
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False, color=color)
    except click.exceptions.Abort:
        return 1
    except _OURS as error:
        return _failed(error)
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):
            click.echo(code, err=True)
            return 2
        return int(code or 0)
    return 0


def _failed(error: Exception) -> int:
    """Say what went wrong in one line on stderr; the exit code it means."""
    if isinstance(error, click.ClickException):
        error.show()
        return EXIT_USAGE
    code = EXIT_USAGE
    if isinstance(error, InvalidPayload):
        text = json.dumps({"error": "invalid_payload", "fields": error.errors})
    elif isinstance(error, SealingUnavailable):
        text = f"cashreceipt: configuration error: {error}"
    elif isinstance(error, IamportError):
        text, code = f"cashreceipt: i'mport: {mask_text(str(error))}", EXIT_UNAVAILABLE
    else:
        text = f"cashreceipt: Redis at {_shown_redis_url()}: {_reason(error)}"
        code = EXIT_UNAVAILABLE
    click.echo(text, err=True)
    return code


def _shown_redis_url() -> str:
    """The Redis URL for a message, password redacted."""
    try:
        url = str(_config().ledger_backend_url)
    except SystemExit:
        url = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    return redact_url(url)


def _reason(error: BaseException) -> str:
    """The first line of an error, with any URL's password redacted."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return " ".join(redact_url(word) if "@" in word else word for word in lines[0].split())


if __name__ == "__main__":
    sys.exit(main())
