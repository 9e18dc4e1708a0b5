"""The bare baseline: a Celery task that does one POST and one XADD, nothing else.

``celery -A cashreceipt_bench.bare worker`` runs it with the **same** Celery
settings as our worker (pool, concurrency, acks, prefetch, events, broker
pool sizes), read from the same ``celeryconfig``, so the ratio of our
throughput to this task's is the price of the ledger, sealing, validation,
lookups and once-only events, and of nothing else. No ledger, no sealing, no
retries: it is a yardstick, not a way to issue receipts.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
import requests
from celery import Celery

from worker.adapters.iamport.session import http_session
from worker.celery.stopping import StoppableAdapter
from worker.config.load import load_celeryconfig

BARE_TASK = "bench.bare_receipt"

#: The settings that make a Celery worker what it is; the bare app copies each one.
SHARED_SETTINGS = (
    "broker_url",
    "broker_use_ssl",
    "broker_transport",
    "broker_transport_options",
    "broker_pool_acquire_timeout",
    "broker_connection_retry_on_startup",
    "visibility_timeout",
    "task_serializer",
    "accept_content",
    "task_ignore_result",
    "result_backend",
    "task_default_queue",
    "worker_pool",
    "worker_concurrency",
    "task_acks_late",
    "task_reject_on_worker_lost",
    "task_acks_on_failure",
    "worker_prefetch_multiplier",
    "worker_cancel_long_running_tasks_on_connection_loss",
    "worker_send_task_events",
    "task_send_sent_event",
    "worker_redirect_stdouts",
    "worker_consumer",
)

celeryconfig = load_celeryconfig()
app = Celery("bench-bare")
app.conf.update({name: getattr(celeryconfig, name) for name in SHARED_SETTINGS})


class _Clients:
    """One HTTP session, one Redis client and one token per process, built on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self.session = requests.Session()
        self.redis: redis.Redis | None = None
        self.token = ""

    def get(self) -> _Clients:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._build()
        return self

    def _build(self) -> None:
        # The same HTTP session as ours, so the HTTP client's cost is the same in both.
        session = http_session(
            celeryconfig.iamport_api_url,
            pool_size=int(celeryconfig.worker_concurrency),
            env=os.environ,
            adapter=StoppableAdapter,
        )
        answer = session.post(
            f"{celeryconfig.iamport_api_url}/users/getToken",
            json={"imp_key": celeryconfig.iamport_key, "imp_secret": celeryconfig.iamport_secret},
            timeout=10,
        )
        answer.raise_for_status()
        self.token = str(answer.json()["response"]["access_token"])
        self.session = session
        self.redis = redis.Redis.from_url(celeryconfig.broker_url)
        self._pid = os.getpid()


_clients = _Clients()


@app.task(name=BARE_TASK, bind=True)
def bare_receipt(self: Any, payload: dict[str, Any]) -> None:
    """POST the receipt, XADD one event naming the task: the least a worker must do."""
    clients = _clients.get()
    answer = clients.session.post(
        f"{celeryconfig.iamport_api_url}/receipts/{payload['imp_uid']}",
        json={"identifier": payload["identifier"], "identifier_type": "phone"},
        headers={"Authorization": f"Bearer {clients.token}"},
        timeout=10,
    )
    assert clients.redis is not None
    clients.redis.xadd(
        celeryconfig.result_stream,
        {
            "type": "bench.bare",
            "data": f'{{"task_id": "{self.request.id}"}}',
            "status": answer.status_code,
        },
    )
