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

from worker.adapters.iamport.client import IamportClient
from worker.adapters.iamport.session import http_session
from worker.adapters.iamport.tokens import RedisTokenCache
from worker.adapters.observe.metrics import Metrics
from worker.adapters.portone.client import PortOneClient
from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.events import EventPublisher
from worker.adapters.store.ledger import Ledger
from worker.adapters.store.redis_client import redis_client
from worker.celery.stopping import StoppableAdapter
from worker.config.load import redis_url
from worker.core.ports import Provider
from worker.core.providers import provider_for
from worker.core.retry import RetryPolicy
from worker.core.types import JobKey


@dataclass(frozen=True)
class Runtime:
    """Everything with side effects that a task uses."""

    #: The clients of the providers this worker serves (PROVIDERS), by name.
    providers: Mapping[str, Provider]
    events: EventPublisher
    redis: redis.Redis
    ledger: Ledger
    policy: RetryPolicy
    sealer: Sealer
    metrics: Metrics
    #: Each served provider's bound on late processing (IAMPORT_SETTLE_SECONDS,
    #: PORTONE_SETTLE_SECONDS): a settling lookup waits out its job's provider's.
    settle_bounds: Mapping[str, float]

    def provider_for(self, job: JobKey | None) -> Provider:
        """The client that runs ``job`` (:func:`worker.core.providers.provider_for`)."""
        return provider_for(self.providers, job)

    def settle_seconds_for(self, job: JobKey | None) -> float:
        """How long after a request ``job``'s provider may still act on it."""
        if job is not None and job.provider in self.settle_bounds:
            return self.settle_bounds[job.provider]
        return max(self.settle_bounds.values(), default=0.0)

    @property
    def settle_seconds(self) -> float:
        """The largest bound configured."""
        return self.settle_seconds_for(None)


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


def build_runtime(conf: Any) -> Runtime:
    """Build the client, publisher and Redis connection pool from ``conf``."""
    # REDIS_URL, not the broker: with RabbitMQ as the broker these stay in Redis.
    client = redis_client(redis_url(conf), health_check_interval=30)
    # A task the worker cancelled at shutdown sends no further request (worker.celery.stopping).
    session = http_session(
        conf.iamport_api_url,
        pool_size=int(conf.worker_concurrency),
        env=os.environ,
        adapter=StoppableAdapter,
    )
    metrics = Metrics()
    providers: dict[str, Provider] = {}
    bounds: dict[str, float] = {}
    served = tuple(getattr(conf, "providers", ("iamport",)))
    if "iamport" in served:
        bounds["iamport"] = float(conf.iamport_settle_seconds)
        providers["iamport"] = IamportClient(
            base_url=conf.iamport_api_url,
            imp_key=conf.iamport_key or "",
            imp_secret=conf.iamport_secret or "",
            session=session,
            token_cache=RedisTokenCache(client),
            timeout=float(conf.iamport_timeout),
            observe=metrics.observe_iamport,
        )
    if "portone" in served:
        bounds["portone"] = float(conf.portone_settle_seconds)
        providers["portone"] = PortOneClient(
            base_url=conf.portone_api_url,
            api_secret=conf.portone_api_secret or "",
            store_id=conf.portone_store_id or "",
            session=http_session(
                conf.portone_api_url,
                pool_size=int(conf.worker_concurrency),
                env=os.environ,
                adapter=StoppableAdapter,
            ),
            timeout=float(conf.portone_timeout),
            observe=metrics.observe_portone,
        )
    return Runtime(
        providers=providers,
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
        settle_bounds=bounds,
    )
