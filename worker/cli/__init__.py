"""``cashreceipt``: the operator's and the integrator's command line.

    cashreceipt enqueue '{"imp_uid": "imp_1", "identifier": "010-1234-5678"}'
    cashreceipt status imp_1          the ledger record (masked), its history, the latest event
    cashreceipt tail                  follow the result events
    cashreceipt stuck                 jobs overdue in a non-terminal state
    cashreceipt settle imp_1          look the receipt up at its provider, settle the job
    cashreceipt dead [--reason R]     jobs that failed for good, and malformed ingress entries
    cashreceipt replay imp_1 ...      re-enqueue failed jobs (or --reason R), with corrections
    cashreceipt reconcile [imp_1 ...] compare the ledger with i'mport
    cashreceipt parked [--requeue]    messages the worker could not run
    cashreceipt reseal                every kept payload under the newest key (key rotation)
    cashreceipt ingress               read the ingress stream (see README)
    cashreceipt bench                 measure throughput and latency (see README)
    cashreceipt migrate-layout        move the Redis keys to this release's layout (see README)

A job is named by its receipt key (``iamport:imp_1``, ``iamport-external:order-7``) or, as
before receipt keys, by a V1 payment's imp_uid (``--imp-uid`` reads any string as one).

Every command has ``--help`` and ``--version``. ``--json`` prints JSON lines (one object per
line) instead of text. Colour is used only on a terminal, and never when
``NO_COLOR`` is set. Exit codes: 0 done, 1 nothing found or a mismatch, 2 bad
input or configuration, 3 Redis (or i'mport) could not be reached: try again,
4 (``reconcile``) no mismatch, but i'mport did not answer for some job.

The commands live by group: ``jobs`` (enqueue, status, tail, stuck, settle),
``dead_letters`` (dead, replay, parked), ``reconcile``, ``sealing`` (reseal), ``ingress``,
``bench`` and ``layout`` (migrate-layout);
``common`` holds what they share. This module builds the group and runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import click
import redis
from kombu.exceptions import OperationalError

from worker.adapters.privacy.sealing import SealingUnavailable
from worker.cli import bench, dead_letters, ingress, jobs, layout, reconcile, sealing
from worker.cli.common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandLine,
    load_config,
    version_option,
)
from worker.config import defaults
from worker.core.errors import ProviderError
from worker.core.masking import mask_text
from worker.core.schemas import InvalidPayload
from worker.core.urls import redact_url


@click.group(
    cls=CommandLine,
    context_settings={"help_option_names": ["-h", "--help"]},
    params=[version_option()],
)
def cli() -> None:
    """Issue Korean cash receipts through i'mport, exactly once."""


for _command in (
    jobs.enqueue,
    jobs.status,
    jobs.tail,
    jobs.stuck,
    jobs.settle,
    dead_letters.dead,
    dead_letters.replay,
    dead_letters.dead_messages,
    reconcile.reconcile,
    sealing.reseal,
    ingress.ingress,
    bench.bench,
    layout.migrate_layout,
):
    cli.add_command(_command)

#: What a command may raise that is said in one line rather than a traceback.
_OURS = (
    click.ClickException,
    InvalidPayload,
    SealingUnavailable,
    ProviderError,
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
    elif isinstance(error, ProviderError):
        text, code = f"cashreceipt: provider: {mask_text(str(error))}", EXIT_UNAVAILABLE
    else:
        text = f"cashreceipt: Redis at {_shown_redis_url()}: {_reason(error)}"
        code = EXIT_UNAVAILABLE
    click.echo(text, err=True)
    return code


def _shown_redis_url() -> str:
    """The Redis URL for a message, password redacted."""
    try:
        url = str(load_config().ledger_backend_url)
    except SystemExit:
        url = os.environ.get("REDIS_URL", defaults.REDIS_URL)
    return redact_url(url)


def _reason(error: BaseException) -> str:
    """The first line of an error, with any URL's password redacted."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return " ".join(redact_url(word) if "@" in word else word for word in lines[0].split())
