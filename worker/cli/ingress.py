"""``ingress``: the process that reads the ingress stream (README, "Producing payment events")."""

from __future__ import annotations

import sys

import click

from worker.ingress import DEFAULT_BLOCK_MS, serve


@click.command()
@click.option(
    "--consumer",
    default=None,
    help="this instance's name in the consumer group (default: hostname-pid)",
)
@click.option(
    "--once",
    is_flag=True,
    help="handle what is in the stream (and what can be taken over), then exit",
)
@click.option(
    "--block-ms",
    type=click.IntRange(min=1),
    default=DEFAULT_BLOCK_MS,
    show_default=True,
    help="how long one read waits for new entries; SIGTERM is noticed within it",
)
def ingress(consumer: str | None, once: bool, block_ms: int) -> None:
    """Read payment events from the ingress stream and enqueue their jobs.

    Exit 0 when stopped (SIGTERM) or done, 1 when --once left entries pending,
    2 on a configuration error or a Redis that may lose what it acknowledged (README,
    "Configuration": REDIS_DURABILITY).
    """
    sys.exit(serve(consumer=consumer, once=once, block_ms=block_ms))
