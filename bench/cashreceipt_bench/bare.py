"""The bare baseline: Celery tasks that make a receipt's HTTP calls and one XADD, nothing else.

``celery -A cashreceipt_bench.bare worker`` runs them with the **same** Celery
settings as our worker (pool, concurrency, acks, prefetch, events, broker
pool sizes), read from the same ``celeryconfig``, so the ratio of our
throughput to these tasks' is the price of the ledger, sealing, validation,
lookups and once-only events, and of nothing else. No ledger, no sealing, no
retries: they are yardsticks, not a way to issue receipts.

- :func:`bare_receipt` (i'mport V1): one POST, as our worker's first attempt makes.
- :func:`bare_portone_receipt` (PortOne V2, a payment): the calls our worker's first
  attempt makes for ``kind: payment``: ``GET /payments/{id}``, then ``POST
  /cash-receipts`` with an ``Idempotency-Key`` (or, when the payment already carries a
  receipt, ``GET /payments/{id}/cash-receipt`` instead of the POST).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import quote

import redis
import requests
from celery import Celery

from worker.adapters.iamport.session import http_session
from worker.celery.stopping import StoppableAdapter
from worker.config.load import load_celeryconfig
from worker.core.idempotency import header_value, idempotency_key

BARE_TASK = "bench.bare_receipt"
BARE_PORTONE_TASK = "bench.bare_portone_receipt"

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


def _session(base_url: str) -> requests.Session:
    """The same HTTP session as ours, so the HTTP client's cost is the same in both."""
    return http_session(
        base_url,
        pool_size=int(celeryconfig.worker_concurrency),
        env=os.environ,
        adapter=StoppableAdapter,
    )


class _Clients:
    """The HTTP sessions, one Redis client and one token per process, built on first use.

    As our worker's runtime: one session to i'mport, and one to PortOne when the
    worker serves it (``PROVIDERS``).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self.session = requests.Session()
        self.portone = requests.Session()
        self.redis: redis.Redis | None = None
        self.token = ""

    def get(self) -> _Clients:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._build()
        return self

    def _build(self) -> None:
        session = _session(celeryconfig.iamport_api_url)
        answer = session.post(
            f"{celeryconfig.iamport_api_url}/users/getToken",
            json={"imp_key": celeryconfig.iamport_key, "imp_secret": celeryconfig.iamport_secret},
            timeout=10,
        )
        answer.raise_for_status()
        self.token = str(answer.json()["response"]["access_token"])
        self.session = session
        if "portone" in celeryconfig.providers:
            self.portone = _session(celeryconfig.portone_api_url)
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
    _event(clients, self.request.id, answer.status_code)


@app.task(name=BARE_PORTONE_TASK, bind=True)
def bare_portone_receipt(self: Any, payload: dict[str, Any]) -> None:
    """GET the payment, POST the receipt with its Idempotency-Key, XADD one event: the
    calls our worker makes for a V2 payment. A payment that carries a receipt already
    gets a GET of that receipt instead of the POST, as ours adopts it."""
    clients = _clients.get()
    base = celeryconfig.portone_api_url.rstrip("/")
    store = celeryconfig.portone_store_id
    headers = {
        "Accept": "application/json",
        "Authorization": f"PortOne {celeryconfig.portone_api_secret}",
    }
    timeout = (min(celeryconfig.portone_timeout, 10.0), celeryconfig.portone_timeout)
    payment_id = payload["payment_id"]
    payment_url = f"{base}/payments/{quote(payment_id, safe='')}"
    answer = clients.portone.get(
        payment_url, params={"storeId": store}, headers=headers, timeout=timeout
    )
    payment = answer.json()
    receipt = payment.get("cashReceipt") or {}
    if receipt.get("status") == "ISSUED" or payment.get("cashReceiptIssuanceStatus") == "ISSUED":
        answer = clients.portone.get(
            f"{payment_url}/cash-receipt",
            params={"storeId": store},
            headers=headers,
            timeout=timeout,
        )
    else:
        key = idempotency_key(
            provider="portone", store=store, id=payment_id, operation="issue", generation=0
        )
        answer = clients.portone.post(
            f"{base}/cash-receipts",
            json={
                "storeId": store,
                "paymentId": payment_id,
                "channelKey": payload["channel_key"],
                "type": "PERSONAL",
                "orderName": payload["order_name"],
                "currency": "KRW",
                "amount": {"total": payload["amount"]},
                "customer": {
                    "identityNumber": payload["identifier"],
                    "identityNumberType": "PHONE",
                },
            },
            headers={**headers, "Idempotency-Key": header_value(key)},
            timeout=timeout,
        )
    _event(clients, self.request.id, answer.status_code)


def _event(clients: _Clients, task_id: str, status: int) -> None:
    """The one event naming the task, with the status of its last HTTP answer."""
    assert clients.redis is not None
    clients.redis.xadd(
        celeryconfig.result_stream,
        {"type": "bench.bare", "data": f'{{"task_id": "{task_id}"}}', "status": status},
    )
