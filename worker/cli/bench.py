"""``bench``: measure throughput and latency (README, "Performance")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

#: `cashreceipt bench` where only the runtime is installed (`pip install cashreceipt`, the
#: worker image): one line, exit code 2, as any missing setting.
BENCH_MISSING = (
    "cashreceipt bench needs the benchmark, which is not installed: from a checkout of this "
    "repository, `pip install ./sandbox ./bench` (or `make install`)"
)


@click.command()
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
@click.option(
    "--provider",
    "providers",
    default="iamport",
    show_default=True,
    help="Comma-separated: whose receipts the throughput and latency profiles issue, "
    "iamport (V1), portone (PortOne V2 payments, ours and bare only), or both, in one run.",
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
    providers: str,
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
    try:
        # Deliberately lazy: the benchmark is a distribution of its own (bench/), kept out of
        # the worker's wheel, so it may not be installed.
        from cashreceipt_bench import run  # noqa: PLC0415
    except ModuleNotFoundError as error:
        if error.name != "cashreceipt_bench":
            raise
        sys.exit(BENCH_MISSING)

    chosen = tuple(p.strip() for p in profiles.split(",") if p.strip())
    unknown = sorted(set(chosen) - set(run.PROFILES))
    if unknown:
        raise click.BadParameter(f"unknown profile {', '.join(unknown)}", param_hint="--profile")
    issuers = tuple(dict.fromkeys(p.strip() for p in providers.split(",") if p.strip()))
    unknown = sorted(set(issuers) - set(run.PROVIDERS))
    if unknown or not issuers:
        raise click.BadParameter(
            f"unknown provider {', '.join(unknown)}" if unknown else "no provider",
            param_hint="--provider",
        )
    try:
        levels = tuple(int(part) for part in latencies.split(",") if part.strip())
        env = run.parse_env(env_pairs)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    options = run.Options(
        n=n,
        latencies=levels,
        profiles=chosen,
        providers=issuers,
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
