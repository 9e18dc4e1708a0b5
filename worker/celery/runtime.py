"""The per-process objects a task needs, built on first use and then reused.

Nothing here runs at import time: a prefork pool forks after importing the
tasks, and sockets or tokens made before the fork would be shared by every
child. The runtime is built lazily, once per process, under a lock because the
thread pool's threads all ask for it at the same moment on the first batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
import requests
from requests.utils import get_environ_proxies

from worker.adapters.iamport.client import IamportClient
from worker.adapters.iamport.tokens import RedisTokenCache
from worker.adapters.observe.metrics import Metrics
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.redis_client import redis_client
from worker.celery.stopping import StoppableAdapter
from worker.config.load import redis_url
from worker.core.retry import RetryPolicy
from worker.core.sealing import Sealer


@dataclass(frozen=True)
class Runtime:
    """Everything with side effects that a task uses."""

    client: IamportClient
    events: EventPublisher
    redis: redis.Redis
    ledger: Ledger
    policy: RetryPolicy
    sealer: Sealer
    metrics: Metrics
    #: IAMPORT_SETTLE_SECONDS: how long after sending i'mport may still act on a request.
    settle_seconds: float


_lock = threading.Lock()
_built: tuple[int, Runtime] | None = None


def get_runtime(conf: Any) -> Runtime:
    """This process's runtime, built from the Celery app's configuration."""
    global _built  # noqa: PLW0603 (one per process, by design)
    pid = os.getpid()
    built = _built
    if built is not None and built[0] == pid:
        return built[1]
    with _lock:
        if _built is None or _built[0] != pid:
            _built = (pid, build_runtime(conf))
        return _built[1]


def http_session(base_url: str, *, pool_size: int, env: Mapping[str, str]) -> requests.Session:
    """The HTTP session to i'mport, with what requests reads from the environment read once.

    Left to itself, requests looks up proxies (and ``no_proxy``), the CA bundle
    and ``~/.netrc`` on every request: about a tenth of a request's CPU here.
    Every request goes to one base URL, so the proxies and the bundle are
    resolved for it now, exactly as requests would (``REQUESTS_CA_BUNDLE``,
    then ``CURL_CA_BUNDLE``). ``.netrc`` is not read at all: its Basic auth
    would replace the bearer token.
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = get_environ_proxies(base_url)
    bundle = env.get("REQUESTS_CA_BUNDLE") or env.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    # No transport-level retries: they would re-POST a receipt behind the
    # task's back. One pooled connection per worker thread. A task the worker
    # cancelled at shutdown sends no further request (worker.celery.stopping).
    adapter = StoppableAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def build_runtime(conf: Any) -> Runtime:
    """Build the client, publisher and Redis connection pool from ``conf``."""
    # REDIS_URL, not the broker: with RabbitMQ as the broker these stay in Redis.
    client = redis_client(redis_url(conf), health_check_interval=30)
    session = http_session(
        conf.iamport_api_url, pool_size=int(conf.worker_concurrency), env=os.environ
    )
    metrics = Metrics()
    return Runtime(
        client=IamportClient(
            base_url=conf.iamport_api_url,
            imp_key=conf.iamport_key or "",
            imp_secret=conf.iamport_secret or "",
            session=session,
            token_cache=RedisTokenCache(client),
            timeout=float(conf.iamport_timeout),
            observe=metrics.observe_iamport,
        ),
        events=EventPublisher(
            client,
            stream=conf.result_stream,
            retention_seconds=int(conf.result_stream_retention),
        ),
        redis=client,
        ledger=Ledger(
            client,
            stream=conf.result_stream,
            event_retention_seconds=int(conf.result_stream_retention),
            retention_seconds=int(conf.ledger_retention),
            lease_seconds=float(conf.ledger_lease_seconds),
        ),
        sealer=Sealer.from_conf(conf),
        policy=RetryPolicy(
            max_attempts=int(conf.retry_max_attempts),
            issuance_failed_max_attempts=int(conf.issuance_failed_max_attempts),
            backoff_base=float(conf.retry_backoff_base),
            backoff_max=float(conf.retry_backoff_max),
        ),
        metrics=metrics,
        settle_seconds=float(conf.iamport_settle_seconds),
    )
