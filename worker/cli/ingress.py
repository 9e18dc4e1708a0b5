"""``ingress``: the process that reads the ingress stream (README, "Producing payment events")."""

from __future__ import annotations

import sys

import click

from worker.ingress import main as ingress_main


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def ingress(ctx: click.Context) -> None:
    """Read the ingress stream and enqueue what it says (options: cashreceipt ingress --help)."""
    sys.exit(ingress_main(list(ctx.args)))
