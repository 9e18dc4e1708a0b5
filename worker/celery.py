"""The Celery app: ``celery -A worker worker`` and ``celery -A worker flower`` find it here.

Configuration comes from ``celeryconfig`` alone. A bad setting stops the
process here, with its message and without a traceback, before Celery starts.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

from worker.settings import load_celeryconfig

celeryconfig = load_celeryconfig()

app = Celery("cashreceipt", include=["tasks.receipts"])
app.config_from_object(celeryconfig)


@signals.worker_init.connect
def _refuse_to_start_without_credentials(**_: Any) -> None:
    """A worker without i'mport credentials would fail every task; fail once, at start."""
    if not (celeryconfig.iamport_key and celeryconfig.iamport_secret):
        raise SystemExit(
            "cashreceipt: configuration error: IAMPORT_KEY and IAMPORT_SECRET must be set "
            "to start a worker (for a local try without credentials, use `make run`, which "
            "starts the i'mport sandbox)"
        )
