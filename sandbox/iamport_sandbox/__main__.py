"""`iamport-sandbox`: start the local i'mport simulator.

Nothing runs on import; `main()` is the console script and `python -m iamport_sandbox`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version

from aiohttp import web

from iamport_sandbox.app import SANDBOX_KEY, SandboxConfig, build_app
from iamport_sandbox.faults import (
    DEFAULT_HANG_SECONDS,
    DEFAULT_REJECT_MESSAGE,
    FaultStep,
    parse_rate_flag,
    parse_step,
)
from iamport_sandbox.idempotency import DEFAULT_RETENTION_SECONDS
from iamport_sandbox.portone import LOOKUP_MODES, REISSUE_MODES
from iamport_sandbox.portone_http import (
    DEFAULT_CHANNEL_KEY,
    DEFAULT_SECRET,
    DEFAULT_STORE_ID,
    PortOneConfig,
)
from iamport_sandbox.state import EXTERNAL_REISSUE_MODES

SHUTDOWN_TIMEOUT = 1.0

EPILOG = """\
default credentials: --imp-key sandbox_key --imp-secret sandbox_secret
PortOne V2 under /portone: Authorization: PortOne sandbox_portone_secret
fault kinds for --fault-rate: status_500 status_502 status_503 status_504 rate_limit
  drop_before drop_after hang hang_after revoke_tokens reject
script-only kinds: latency status garbage answer
admin API (no auth): http://HOST:PORT/__sandbox__/ ; see docs/sandbox.md
"""


def _rate(text: str) -> tuple[str, float]:
    try:
        return parse_rate_flag(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _script(text: str) -> tuple[str, list[FaultStep]]:
    imp_uid, sep, raw = text.partition("=")
    if not sep or not imp_uid:
        raise argparse.ArgumentTypeError(f"expected IMP_UID=JSON_LIST, got {text!r}")
    try:
        steps = json.loads(raw)
        if not isinstance(steps, list):
            steps = [steps]
        return imp_uid, [parse_step(step) for step in steps]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bad script for {imp_uid}: {exc}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iamport-sandbox",
        description="Local simulator of the i'mport (PortOne V1) cash-receipt REST API, and of "
        "PortOne V2's under /portone.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('iamport-sandbox')}"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8787, help="port to bind, 0 for any free one (default 8787)"
    )
    parser.add_argument(
        "--imp-key", default="sandbox_key", help="REST API key (default %(default)s)"
    )
    parser.add_argument(
        "--imp-secret", default="sandbox_secret", help="REST API secret (default %(default)s)"
    )
    parser.add_argument(
        "--token-lifetime",
        type=int,
        default=1800,
        metavar="SECONDS",
        help="access token lifetime (default %(default)s, as i'mport)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every receipts/payments request"
    )
    parser.add_argument(
        "--latency-jitter-ms",
        type=float,
        default=0.0,
        help="plus a uniform random 0..N ms on every receipts/payments request",
    )
    parser.add_argument(
        "--fault-rate",
        type=_rate,
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="probability in [0,1] of a fault kind per receipts/payments request; repeatable",
    )
    parser.add_argument(
        "--fault-script",
        type=_script,
        action="append",
        default=[],
        metavar="IMP_UID=JSON",
        help='scripted next responses, e.g. imp_1=\'[{"kind":"status","status":503}]\'',
    )
    parser.add_argument(
        "--hang-seconds",
        type=float,
        default=DEFAULT_HANG_SECONDS,
        metavar="SECONDS",
        help="how long a rate-drawn hang holds the request (default %(default)g)",
    )
    parser.add_argument(
        "--retry-after",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="the Retry-After of a rate-drawn 429 (default %(default)g)",
    )
    parser.add_argument(
        "--late-limit-seconds",
        type=float,
        default=None,
        metavar="SECONDS",
        help="act on a request at most this long after it arrived, whatever its latency: "
        "the bound on late processing (default: none)",
    )
    parser.add_argument(
        "--reject-message",
        default=DEFAULT_REJECT_MESSAGE,
        metavar="TEXT",
        help="the PG's message in a rate-drawn rejection",
    )
    parser.add_argument(
        "--allow-duplicates",
        action="store_true",
        help="accept a POST while a receipt is active, creating a second one (a visible "
        "double issue); blind requests are counted in every mode",
    )
    parser.add_argument(
        "--external-reissue",
        choices=EXTERNAL_REISSUE_MODES,
        default="refuse",
        help="whether POST /receipts/external/{merchant_uid} issues again once that merchant_uid's "
        "receipts are all cancelled (allow) or answers 'already issued' (refuse); the real API's "
        "answer is unconfirmed (default %(default)s)",
    )
    _add_portone_arguments(parser)
    parser.add_argument("--seed", type=int, default=None, help="seed for fault draws and ids")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="DEBUG logs every request, with identifiers masked (default %(default)s)",
    )
    return parser


def _add_portone_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("PortOne V2 (served under /portone)")
    group.add_argument(
        "--portone-secret",
        default=DEFAULT_SECRET,
        metavar="SECRET",
        help="the V2 API secret of 'Authorization: PortOne <secret>' (default %(default)s)",
    )
    group.add_argument(
        "--portone-store-id",
        default=DEFAULT_STORE_ID,
        metavar="STORE_ID",
        help="the store the secret belongs to; another storeId is 403 (default %(default)s)",
    )
    group.add_argument(
        "--portone-channel-key",
        action="append",
        default=None,
        metavar="KEY",
        help=f"a channel key POST /cash-receipts accepts; repeatable; others are 404 "
        f"CHANNEL_NOT_FOUND (default {DEFAULT_CHANNEL_KEY})",
    )
    group.add_argument(
        "--portone-lookup",
        choices=LOOKUP_MODES,
        default="issued_first",
        help="which receipt GET /payments/{paymentId}/cash-receipt shows of several: the "
        "newest ISSUED one, else the newest (issued_first), or the first, of any state "
        "(oldest); the real API's choice is unconfirmed (default %(default)s)",
    )
    group.add_argument(
        "--portone-reissue",
        choices=REISSUE_MODES,
        default="refuse",
        help="whether POST /cash-receipts issues again for a paymentId whose receipts are all "
        "cancelled (allow) or answers 409 CASH_RECEIPT_ALREADY_ISSUED (refuse); the real API's "
        "answer is unconfirmed (default %(default)s)",
    )
    group.add_argument(
        "--idempotency-retention",
        type=float,
        default=DEFAULT_RETENTION_SECONDS,
        metavar="SECONDS",
        help="how long an Idempotency-Key is kept, on the sandbox clock, from its first "
        "request (default %(default)g: PortOne's 3 hours)",
    )


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    if args.token_lifetime < 1:
        raise SystemExit("--token-lifetime must be at least 1 second")
    if args.latency_ms < 0 or args.latency_jitter_ms < 0:
        raise SystemExit("--latency-ms and --latency-jitter-ms must not be negative")
    if args.hang_seconds < 0 or args.retry_after < 0:
        raise SystemExit("--hang-seconds and --retry-after must not be negative")
    if args.late_limit_seconds is not None and args.late_limit_seconds < 0:
        raise SystemExit("--late-limit-seconds must not be negative")
    if not args.reject_message:
        raise SystemExit("--reject-message must not be empty")
    if args.idempotency_retention < 0:
        raise SystemExit("--idempotency-retention must not be negative")
    if not args.portone_secret or not args.portone_store_id:
        raise SystemExit("--portone-secret and --portone-store-id must not be empty")
    scripts: dict[str, list[FaultStep]] = {}
    for imp_uid, steps in args.fault_script:
        scripts.setdefault(imp_uid, []).extend(steps)
    return SandboxConfig(
        imp_key=args.imp_key,
        imp_secret=args.imp_secret,
        token_lifetime=args.token_lifetime,
        latency_ms=args.latency_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        rates={name: rate for name, rate in args.fault_rate if rate},
        scripts=scripts,
        seed=args.seed,
        hang_seconds=args.hang_seconds,
        retry_after=args.retry_after,
        reject_message=args.reject_message,
        allow_duplicates=args.allow_duplicates,
        late_limit_seconds=args.late_limit_seconds,
        external_reissue=args.external_reissue,
        portone=PortOneConfig(
            secret=args.portone_secret,
            store_id=args.portone_store_id,
            channel_keys=tuple(args.portone_channel_key or [DEFAULT_CHANNEL_KEY]),
            reissue=args.portone_reissue,
            lookup=args.portone_lookup,
            idempotency_retention=args.idempotency_retention,
        ),
    )


async def serve(config: SandboxConfig, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT, then close within SHUTDOWN_TIMEOUT even with hung requests."""
    app = build_app(config)
    runner = web.AppRunner(
        app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    # With --port 0 the kernel picks the port; the listening line is how callers learn it.
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"iamport-sandbox listening on http://{host}:{bound}", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        app[SANDBOX_KEY].closing = True
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiohttp's access log would print raw paths and cost time per request; ours masks bodies.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(config, args.host, args.port))
    except OSError as exc:
        print(f"iamport-sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
