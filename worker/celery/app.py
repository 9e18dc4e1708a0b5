"""The Celery app: ``celery -A worker worker`` and ``celery -A worker flower`` find it here.

Configuration comes from ``celeryconfig`` alone, read when the app is first
configured (its first use of a setting), never when this module is imported: a
producer, the CLI's ``--version`` and a test can import the app with no
environment. A bad setting stops the process then, with its message and without
a traceback, before Celery starts anything.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import Celery, signals
from celery.app.task import Task
from celery.apps import worker as celery_worker_app

from worker.adapters.observe.logs import say_as_json, setup_process_logging, use_json
from worker.adapters.observe.metrics import MetricsServer, StateCollector, queue_depth, start_server
from worker.adapters.privacy.logmask import MaskPersonalData, install
from worker.adapters.privacy.sealing import Sealer, SealingUnavailable
from worker.adapters.store.durability import NotDurable, check_durability
from worker.adapters.store.keys import LAYOUT_VERSION
from worker.adapters.store.layout import migrate
from worker.adapters.store.redis_client import redis_client
from worker.adapters.store.sweeper import Sweeper
from worker.celery.fleet import FleetUnknown, ask_the_fleet, refusal
from worker.celery.runtime import get_runtime
from worker.config.load import config_secrets, load_celeryconfig, redis_url
from worker.core.contract import QUEUE
from worker.core.retry import broker_countdown
from worker.core.urls import redact_url

log = logging.getLogger(__name__)


class CashReceiptCelery(Celery):  # type: ignore[misc]
    """Celery, with countdowns that a RabbitMQ quorum queue can carry.

    Every publish goes through ``send_task``: the helper's, the sweeper's and a
    task's retry (``Task.retry`` ends in ``app.send_task``).
    """

    def send_task(
        self, name: str, *args: Any, countdown: float | None = None, **options: Any
    ) -> Any:
        whole = bool(self.conf.get("countdown_whole_seconds"))
        countdown = broker_countdown(countdown, whole_seconds=whole)
        return super().send_task(name, *args, countdown=countdown, **options)


app = CashReceiptCelery("cashreceipt", include=["tasks.receipts"])

# Its task_revoked hook: a message discarded unrun still ends in one event.
import worker.celery.revoked  # noqa: E402, F401


@app.on_configure.connect
def _read_settings(sender: Celery, **_: Any) -> None:
    """The settings, on first use: Celery sends this just before it reads the config source."""
    sender.config_from_object(load_celeryconfig())


@signals.worker_init.connect
def _refuse_to_start_misconfigured(**_: Any) -> None:
    """A worker without credentials or a PII key would fail every task; fail once, at start."""
    served = tuple(app.conf.providers)
    if "iamport" in served and not (app.conf.iamport_key and app.conf.iamport_secret):
        raise SystemExit(
            "cashreceipt: configuration error: IAMPORT_KEY and IAMPORT_SECRET must be set "
            "to start a worker that serves iamport (PROVIDERS) (for a local try without "
            "credentials, use `make run`, which starts the i'mport sandbox)"
        )
    if "portone" in served and not (app.conf.portone_api_secret and app.conf.portone_store_id):
        raise SystemExit(
            "cashreceipt: configuration error: PORTONE_API_SECRET (or PORTONE_API_SECRET_FILE) "
            "and PORTONE_STORE_ID must be set to start a worker that serves portone (PROVIDERS)"
        )
    try:
        Sealer.from_conf(app.conf)
    except SealingUnavailable as error:
        raise SystemExit(f"cashreceipt: configuration error: {error}") from None


#: What the durability check found at this start, said once logging is set up.
_start_warnings: list[str] = []
#: How long the check waits between tries while Redis cannot be reached, at most.
DURABILITY_RETRY_MAX = 10.0


@signals.worker_init.connect
def _refuse_a_forgetful_redis(**_: Any) -> None:
    """Exit before consuming when REDIS_URL's Redis may lose what it acknowledged.

    worker_init runs before the pool and the consumer start: a SystemExit here
    ends the process with its one line and a non-zero exit, having taken no
    message. A Redis that cannot be reached yet is waited for, as kombu waits
    for the broker; a restart policy (compose's) would only repeat the wait.
    """
    shown = redact_url(redis_url(app.conf))
    client = redis_client(redis_url(app.conf), socket_timeout=10, socket_connect_timeout=10)
    delay = 1.0
    try:
        while True:
            try:
                found = check_durability(
                    client, policy=str(app.conf.redis_durability), shown_url=shown
                )
            except NotDurable as refusal:
                raise SystemExit(str(refusal)) from None
            except (redis.ConnectionError, redis.TimeoutError) as error:
                # Logging is not set up yet: logging's last resort prints this to stderr.
                log.warning(
                    "cashreceipt: Cannot connect to %s to check that it keeps what it "
                    "acknowledged: %s. Trying again in %gs",
                    shown,
                    error,
                    delay,
                )
                time.sleep(delay)
                delay = min(DURABILITY_RETRY_MAX, delay * 2)
                continue
            _start_warnings[:] = found
            return
    finally:
        client.close()


@signals.celeryd_after_setup.connect
def _say_start_warnings(**_: Any) -> None:
    """What the start found (durability, a migration), through Celery's (masked, maybe
    JSON) log handlers."""
    for warning in _start_warnings:
        log.warning("%s", warning)


@signals.worker_init.connect
def _migrate_the_layout(**_: Any) -> None:
    """Bring the Redis data to the key layout this release reads, before any task runs.

    Not while a worker of another layout answers (worker.celery.fleet): the two would
    not see each other's indexes. Idempotent and atomic per key
    (worker.adapters.store.layout): the first worker of the release moves the keys, and
    the others find nothing left to move.
    """
    try:
        older = ask_the_fleet(app)
    except FleetUnknown as error:
        raise SystemExit(
            f"cashreceipt: refusing to start: could not ask the broker whether workers of "
            f"another release still run: {error}"
        ) from None
    if older:
        raise SystemExit(refusal(older))
    # A client of its own, closed here: the runtime (its metrics among it) must be built
    # in the process that runs tasks, after the pool is set up, never in the main process
    # before it (its counters then went to no file the metrics server reads).
    client = redis_client(redis_url(app.conf), socket_timeout=10, socket_connect_timeout=10)
    try:
        moved = migrate(client, stream=app.conf.result_stream)
    finally:
        client.close()
    if moved.moved:
        _start_warnings.append(
            f"cashreceipt: migrated the Redis keys to layout {LAYOUT_VERSION}: "
            f"{moved.index_members} index members, {moved.side_keys} side keys, "
            f"{moved.status_pointers} status pointers, {moved.markers} second markers"
        )


def _mask_logs(logger: logging.Logger, **_: Any) -> None:
    """Every handler Celery sets up masks identifiers and secrets, at every level."""
    install(MaskPersonalData(config_secrets(app.conf)), [logger, logging.getLogger()])


signals.after_setup_logger.connect(_mask_logs)
signals.after_setup_task_logger.connect(_mask_logs)


def _task_context() -> dict[str, Any]:
    """The task being run in this thread, for JSON lines logged deep inside it."""
    task: Task | None = app.current_task
    if task is None or not task.request.id:
        return {}
    return {"task_id": task.request.id, "task": task.name}


def _format_logs(logger: logging.Logger, **_: Any) -> None:
    """LOG_FORMAT=json: every handler Celery set up writes one JSON object per line."""
    if app.conf.log_format == "json":
        use_json([*logger.handlers, *logging.getLogger().handlers], context=_task_context)


signals.after_setup_logger.connect(_format_logs)
signals.after_setup_task_logger.connect(_format_logs)


@signals.celeryd_init.connect
def _json_from_the_start(instance: Any, **_: Any) -> None:
    """LOG_FORMAT=json: nothing but JSON lines, from the first one to the last.

    Runs as the worker starts, before Celery sets up logging: the banner (many
    lines of text) is left out, warnings until then (running as root) go
    through a masked JSON handler that Celery's own set-up replaces, and
    Celery's shutdown notices are written as JSON.
    """
    if app.conf.log_format != "json":
        return
    instance.quiet = True
    logging.captureWarnings(True)
    setup_process_logging(app.conf, level=logging.WARNING, text="%(message)s")
    celery_worker_app.safe_say = say_as_json


_metrics: list[MetricsServer] = []


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    """Serve /metrics from the main process, before the pool forks (METRICS_PORT=0: none)."""
    if not app.conf.metrics_port:
        return
    state = StateCollector(
        client=lambda: get_runtime(app.conf).redis,
        queue_depth=lambda: queue_depth(app, QUEUE),
        queue=QUEUE,
        ingress_stream=app.conf.ingress_stream,
    )
    try:
        server = start_server(
            port=app.conf.metrics_port,
            address=app.conf.metrics_address,
            collectors=[state],
        )
    except OSError as error:
        raise SystemExit(
            f"cashreceipt: configuration error: METRICS_PORT={app.conf.metrics_port} on "
            f"{app.conf.metrics_address} cannot be served ({error.strerror}); give each "
            "worker on a host its own port, or set METRICS_PORT=0"
        ) from None
    _metrics.append(server)


@signals.worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    while _metrics:
        _metrics.pop().stop()


_sweepers: list[Sweeper] = []


@signals.worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Every worker sweeps; the sweeper's lock keeps it to one sweep at a time."""
    runtime = get_runtime(app.conf)
    sweeper = Sweeper(
        ledger=runtime.ledger,
        client=runtime.redis,
        send=app.send_task,
        interval=float(app.conf.sweep_interval),
        resent=runtime.metrics.jobs_resent,
    )
    sweeper.start()
    _sweepers.append(sweeper)


@signals.worker_ready.connect
def _bounded_shutdown_on_sigterm(sender: Any, **_: Any) -> None:
    """SIGTERM starts Celery's soft shutdown, bounded, instead of an open-ended warm one.

    Celery's own SIGTERM (warm shutdown) waits for every running task however
    long it takes; only its cold shutdown (SIGQUIT, or SIGTERM under
    ``REMAP_SIGTERM=SIGQUIT``) honours ``worker_soft_shutdown_timeout``: stop
    consuming, let the tasks in hand finish within the timeout, then cancel
    what still runs, whose messages go back to the queue (worker.celery.stopping).
    This installs that handler for SIGTERM, as REMAP_SIGTERM would, so that
    every start command (compose, `make run`, the tests, by hand) stops the
    same way. The pool of a prefork or thread worker is the sender's controller.
    """
    celery_worker_app.install_worker_term_hard_handler(sender.controller, sig="SIGTERM")


@signals.worker_shutting_down.connect
def _stop_sweeper(**_: Any) -> None:
    for sweeper in _sweepers:
        sweeper.stop()
