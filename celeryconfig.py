"""Celery settings for the cash-receipt worker, read from the environment only.

Every setting comes from one of the variables in the README's table, parsed
explicitly; a wrong value, or a combination that breaks a rule below, raises
:class:`worker.config.ConfigError` at start, never halfway through a task.
Celery's own ``CELERY_*`` variables are refused, so they cannot become a
second, silent source of truth. The parsers and the rules live in :mod:`worker.config`; this
module holds the settings only.

Links: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

from __future__ import annotations

import os

from worker.config import defaults
from worker.config.broker import (
    AMQP_SCHEMES,
    QUEUE_TYPES,
    REDIS_SCHEMES,
    choose_broker,
    is_redis_url,
)
from worker.config.parse import (
    env_address,
    env_choice,
    env_flag,
    env_int,
    env_number,
    env_providers,
    env_str,
    env_token,
    env_url,
    fernet_keys,
    refuse_celery_variables,
    refuse_same_stream,
    with_secret_files,
)
from worker.config.timing import (
    attempt_timeout,
    check_backoff,
    check_event_retention,
    check_visibility_timeout,
    lease_seconds,
    minimum_visibility_timeout,
    settle_bound,
    unacked_restore_interval,
)
from worker.config.tls import check_ca_bundles, redis_tls, refuse_plain_http
from worker.contract import QUEUE, rabbitmq_queues

# -- the settings ----------------------------------------------------------------

refuse_celery_variables(os.environ)
# IAMPORT_SECRET, REDIS_URL and BROKER_URL may each come from a file (X_FILE).
_env = with_secret_files(os.environ)

# REDIS_URL: the Redis of our own clients (ledger, token cache, events, dead
# messages, the ingress stream), and the broker too unless BROKER_URL says otherwise.
# The name matters: Celery masks the password of a setting whose name holds
# "backend" (and of broker_url) in `celery inspect conf`, `celery report` and
# Flower; a plain "redis_url" would be shown whole.
ledger_backend_url, _redis_ssl = redis_tls(
    env_url(_env, "REDIS_URL", defaults.REDIS_URL, schemes=REDIS_SCHEMES)
)
# REDIS_DURABILITY: the worker and the ingress refuse to start on a Redis that may
# lose what it acknowledged (worker/adapters/store/durability.py); "accept-risk"
# starts anyway, with a warning at every start.
redis_durability = env_choice(
    _env, "REDIS_DURABILITY", defaults.REDIS_DURABILITY, choices=defaults.REDIS_DURABILITY_CHOICES
)
# BROKER_URL: where task messages travel. Redis (REDIS_URL's server when unset)
# or RabbitMQ (amqp://, amqps://), for teams whose queue outgrew one Redis.
_broker = env_str(_env, "BROKER_URL")
if _broker is not None:
    _broker = env_url(_env, "BROKER_URL", _broker, schemes=REDIS_SCHEMES + AMQP_SCHEMES)
broker_url, broker_use_ssl = choose_broker(_broker, (ledger_backend_url, _redis_ssl))
broker_is_redis = is_redis_url(broker_url)
iamport_api_url = env_url(
    _env, "IAMPORT_API_URL", "https://api.iamport.kr", schemes=("https", "http")
)
iamport_allow_http = env_flag(_env, "IAMPORT_ALLOW_HTTP")
refuse_plain_http(iamport_api_url, allow_http=iamport_allow_http)
check_ca_bundles(_env)
iamport_key = env_str(_env, "IAMPORT_KEY")
iamport_secret = env_str(_env, "IAMPORT_SECRET")
iamport_timeout = env_number(
    _env, "IAMPORT_TIMEOUT", defaults.IAMPORT_TIMEOUT, minimum=0.1, maximum=120.0
)
# How long after a request was sent i'mport may still act on it (README, "The
# limit of the guarantee"). i'mport publishes no bound; PortOne's own SDK waits
# 60 s for an answer, so 60 s, and never less than our read timeout by default.
iamport_settle_seconds = env_number(
    _env,
    "IAMPORT_SETTLE_SECONDS",
    max(defaults.IAMPORT_SETTLE_SECONDS, iamport_timeout),
    minimum=0.0,
    maximum=3600.0,
)
# PROVIDERS: which providers' jobs this worker runs, and which the producers and the
# ingress accept; the same list for every worker on the queue (README, "PortOne V2").
providers = env_providers(_env, "PROVIDERS", defaults.PROVIDERS)
# PortOne V2 (issue 16): read always, required only when PROVIDERS names portone.
portone_api_url = env_url(
    _env, "PORTONE_API_URL", defaults.PORTONE_API_URL, schemes=("https", "http")
)
portone_allow_http = env_flag(_env, "PORTONE_ALLOW_HTTP")
portone_api_secret = env_token(_env, "PORTONE_API_SECRET")
portone_store_id = env_str(_env, "PORTONE_STORE_ID")
# PortOne recommends a read timeout of at least 60 s; a disconnect does not cancel
# the request on its server.
portone_timeout = env_number(
    _env, "PORTONE_TIMEOUT", defaults.PORTONE_TIMEOUT, minimum=0.1, maximum=300.0
)
# V2's bound on late processing: at least the read timeout.
portone_settle_seconds = env_number(
    _env,
    "PORTONE_SETTLE_SECONDS",
    max(defaults.PORTONE_SETTLE_SECONDS, portone_timeout),
    minimum=portone_timeout,
    maximum=3600.0,
)
if "portone" in providers:
    refuse_plain_http(
        portone_api_url,
        allow_http=portone_allow_http,
        name="PORTONE",
        what="the PortOne API secret",
    )
# Every provider's bound; the lease and the visibility timeout wait out the largest.
_settle_bounds = {"iamport": iamport_settle_seconds, "portone": portone_settle_seconds}
_timeouts = {"iamport": iamport_timeout, "portone": portone_timeout}
settle_seconds = settle_bound({name: _settle_bounds[name] for name in providers})
# The time rule's read timeout, in i'mport's terms: the slowest provider configured's.
_attempt_timeout = attempt_timeout({name: _timeouts[name] for name in providers})
retry_backoff_base = env_number(_env, "RETRY_BACKOFF_BASE", 1.0, minimum=0.01, maximum=3600.0)
retry_backoff_max = env_number(
    _env, "RETRY_BACKOFF_MAX", defaults.RETRY_BACKOFF_MAX, minimum=0.01, maximum=3600.0
)
# 60 attempts of full-jitter backoff capped at 300 s span about 2 hours on
# average, and under an hour for fewer than one job in a billion: an hour-long
# i'mport outage is ridden out. (With 40, about 0.7% of jobs gave up within the
# hour: full jitter makes single delays short.)
retry_max_attempts = env_int(_env, "RETRY_MAX_ATTEMPTS", 60, minimum=1, maximum=1000)
# Delays up to this are Celery countdowns; longer ones park the job in the
# ledger and the sweeper resumes it, so no countdown outlives the visibility
# timeout and a long outage holds no message in any worker's memory.
retry_countdown_max = env_number(
    _env, "RETRY_COUNTDOWN_MAX", defaults.RETRY_COUNTDOWN_MAX, minimum=0.0, maximum=3600.0
)
issuance_failed_max_attempts = env_int(
    _env, "ISSUANCE_FAILED_MAX_ATTEMPTS", 3, minimum=1, maximum=100
)
result_stream = env_str(_env, "RESULT_STREAM", defaults.RESULT_STREAM) or defaults.RESULT_STREAM
result_stream_retention = env_int(
    _env,
    "RESULT_STREAM_RETENTION",
    defaults.RESULT_STREAM_RETENTION,
    minimum=60,
    maximum=365 * 24 * 3600,
)

check_backoff(retry_backoff_base, retry_backoff_max)

# How long a duplicate message waits for the job in flight before it retries.
duplicate_wait = env_number(
    _env, "DUPLICATE_WAIT", defaults.DUPLICATE_WAIT, minimum=0.0, maximum=600.0
)

_longest_countdown = min(retry_backoff_max, retry_countdown_max)
_minimum_visibility = minimum_visibility_timeout(
    iamport_timeout=_attempt_timeout,
    longest_countdown=_longest_countdown,
    duplicate_wait=duplicate_wait,
    settle_seconds=settle_seconds,
)
broker_visibility_timeout = env_int(
    _env, "BROKER_VISIBILITY_TIMEOUT", _minimum_visibility, minimum=1, maximum=7 * 24 * 3600
)
check_visibility_timeout(
    broker_visibility_timeout,
    iamport_timeout=_attempt_timeout,
    longest_countdown=_longest_countdown,
    duplicate_wait=duplicate_wait,
    settle_seconds=settle_seconds,
)
check_event_retention(result_stream_retention, visibility_timeout=broker_visibility_timeout)

# Threads per worker process. A task spends nearly all its time waiting on
# i'mport (100-500 ms), so one process keeps 64 in flight: 320 receipts/s at
# 200 ms, about what one process's CPU (one core, under the GIL) can serve
# here (README, Performance). Run one process per core to use the others.
worker_concurrency = env_int(_env, "WORKER_CONCURRENCY", 64, minimum=1, maximum=1000)

# The ledger (worker/adapters/store/ledger.py). A claim lasts one attempt's worst case and the
# bound on late processing; past that the sweeper hands the job to another
# task, so a job whose worker died resumes after this lease, well inside the
# visibility timeout.
ledger_lease_seconds = lease_seconds(_attempt_timeout, settle_seconds)
ledger_retention = env_int(
    _env, "LEDGER_RETENTION", defaults.LEDGER_RETENTION, minimum=60, maximum=365 * 24 * 3600
)
sweep_interval = env_number(_env, "SWEEP_INTERVAL", 5.0, minimum=0.1, maximum=600.0)

# The ingress (worker/ingress.py, `cashreceipt ingress`): producers XADD payment
# events to this stream, and every ingress instance reads it in this consumer group.
ingress_stream = env_str(_env, "INGRESS_STREAM", defaults.INGRESS_STREAM) or defaults.INGRESS_STREAM
ingress_group = env_str(_env, "INGRESS_GROUP", defaults.INGRESS_GROUP) or defaults.INGRESS_GROUP
refuse_same_stream(ingress_stream, result_stream)
# An entry pending this long is taken to belong to a dead instance and is taken
# over (XAUTOCLAIM). Handling one entry takes milliseconds; taking over one that
# a live but slow instance still holds is harmless (the task id is the same),
# only wasted work.
ingress_claim_idle = env_number(_env, "INGRESS_CLAIM_IDLE", 30.0, minimum=0.1, maximum=86400.0)

# Identifiers are sealed with these (worker.adapters.privacy.sealing). The worker and the
# producers refuse to run without one unless plaintext is explicitly allowed.
pii_encryption_keys = fernet_keys(_env)
allow_plaintext_pii = env_flag(_env, "ALLOW_PLAINTEXT_PII")

# -- logs and metrics ----------------------------------------------------------------

# LOG_FORMAT: "text", readable lines (Celery's), or "json", one object per line
# for a log shipper (worker/adapters/observe/logs.py). Either way every line is masked.
log_format = env_choice(_env, "LOG_FORMAT", "text", choices=("text", "json"))
# A worker serves Prometheus metrics on this port (worker/adapters/observe/metrics.py); 0 turns
# them off. A second worker on the same host needs a port of its own: a port in
# use stops the start rather than leaving a worker nobody can see.
metrics_port = env_int(_env, "METRICS_PORT", 9809, minimum=0, maximum=65535)
# Every interface by default: the scraper runs in another container or host.
metrics_address = env_address(_env, "METRICS_ADDRESS", "0.0.0.0")  # noqa: S104

# -- Celery proper -------------------------------------------------------------------

# Events and the token cache live in Redis; task results do not exist.
result_backend = None
task_ignore_result = True

# JSON only: a producer in any language can write it, and nothing can smuggle
# a pickle into the worker.
task_serializer = "json"
accept_content = ["json"]
result_accept_content = ["json"]

task_default_queue = QUEUE
task_routes = {"issue_cash_receipt": {"queue": QUEUE}}

# I/O-bound work: a thread pool waits on i'mport cheaply. Celery's time limits
# do not apply to threads; the client's timeouts bound every task instead.
# WORKER_POOL=prefork runs WORKER_CONCURRENCY child processes instead (none of
# the time rules above change: no time limit is set). It is read here because
# `celery worker --pool prefork` cannot be told from Celery's default and
# loses to this setting.
worker_pool = env_choice(_env, "WORKER_POOL", "threads", choices=("threads", "prefork"))

# Ack after the task has published its outcome, so a crash mid-task redelivers
# the message; the look-before-POST rule makes that redelivery harmless.
task_acks_late = True
# With late acks a prefork child killed mid-task would otherwise be acked.
task_reject_on_worker_lost = True
# A task that raised has already published its failure event; do not loop it.
task_acks_on_failure = True
# Hold one message per thread: anything prefetched beyond that waits in this
# worker's memory while another worker sits idle.
worker_prefetch_multiplier = 1
# A broker drop while a late-acked task runs would otherwise run it twice.
worker_cancel_long_running_tasks_on_connection_loss = True
broker_connection_retry_on_startup = True
# Never block forever on an exhausted pool when publishing a retry.
broker_pool_acquire_timeout = 10.0

if broker_is_redis:
    broker_transport_options = {
        "visibility_timeout": broker_visibility_timeout,
        # kombu's default pool of 10 runs out under a larger thread pool
        # ("Couldn't ack ... MaxConnectionsError"); size it to the concurrency.
        "max_connections": worker_concurrency * 2 + 10,
        # One scan for unacked messages every interval (throttle 1), at most 10 s.
        "unacked_restore_interval": unacked_restore_interval(broker_visibility_timeout),
        "unacked_restore_throttle": 1,
    }
    visibility_timeout = broker_visibility_timeout
    # kombu's Redis transport, except that a queue entry which is not a message is
    # kept as a dead message instead of stopping the worker (worker/celery/transport.py).
    broker_transport = "worker.celery.transport:Transport"
else:
    # RabbitMQ. A quorum queue is replicated across the cluster's nodes and
    # survives losing a minority of them; "classic" is for a single node.
    broker_queue_type = env_choice(_env, "BROKER_QUEUE_TYPE", "quorum", choices=QUEUE_TYPES)
    # Durable, and bound to a topic exchange: Celery's native delayed delivery
    # (how a countdown works on a quorum queue, which has no global QoS to hold
    # early messages in the worker) routes a delayed message back through that
    # exchange, and refuses a direct one. Producers must declare the same queue:
    # worker.contract.rabbitmq_queues.
    task_queues = rabbitmq_queues(broker_queue_type)
    task_default_exchange = QUEUE
    task_default_exchange_type = "topic"
    task_default_routing_key = QUEUE
    # Quorum queues refuse global QoS: Celery sees the queue type and sets the
    # prefetch per consumer instead (Celery >= 5.5), which is what we want.
    worker_detect_quorum_queues = True
    # Native delayed delivery counts whole seconds and refuses less than one
    # (worker.core.retry.broker_countdown rounds up; worker.celery applies it).
    countdown_whole_seconds = broker_queue_type == "quorum"
    # The publishing pool must not run out under the thread pool (retries,
    # the sweeper): one connection per thread and some to spare.
    broker_pool_limit = worker_concurrency * 2 + 10
    # No visibility timeout: RabbitMQ redelivers an unacked message when the
    # connection that holds it closes. Its consumer_timeout (30 min by default)
    # must stay above the longest attempt (see the time rule).

# Unknown, invalid and undecodable task messages are kept as dead messages, not logged whole
# and dropped (worker/celery/consumer.py).
worker_consumer = "worker.celery.consumer:Consumer"

# Graceful shutdown (README, "Stopping and rolling deploys"). SIGTERM starts
# Celery's soft shutdown (REMAP_SIGTERM=SIGQUIT, set by the image and `make run`):
# no new messages, the tasks in hand get this long to finish, and whatever is
# still unacked then goes back to the queue for another worker.
worker_soft_shutdown_timeout = env_number(
    _env, "WORKER_SOFT_SHUTDOWN_TIMEOUT", 30.0, minimum=0.0, maximum=3600.0
)

# Flower lists received, started, retried, succeeded and failed tasks.
worker_send_task_events = True
task_send_sent_event = True

# print() in a task must not end up in the log as if it were a warning.
worker_redirect_stdouts = False
