"""Celery settings for the cash-receipt worker, read from the environment only.

Every setting comes from one of the variables in the README's table, parsed
explicitly; a wrong value, or a combination that breaks a rule below, raises
:class:`ConfigError` at start, never halfway through a task. Celery's own
``CELERY_*`` variables are refused, so they cannot become a second, silent
source of truth.

Links: https://docs.celeryq.dev/en/stable/userguide/configuration.html
"""

from __future__ import annotations

import base64
import ipaddress
import math
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from worker.contract import QUEUE, rabbitmq_queues
from worker.urls import redact_url


class ConfigError(ValueError):
    """A setting is missing, malformed or inconsistent with another."""


# -- parsing -----------------------------------------------------------------


def env_str(env: Mapping[str, str], name: str, default: str | None = None) -> str | None:
    """A string setting; empty counts as unset."""
    value = env.get(name, "").strip()
    return value or default


def env_number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float
) -> float:
    """A number setting within [minimum, maximum]."""
    raw = env_str(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum:g} and {maximum:g}, got {raw!r}")
    return value


def env_int(env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int) -> int:
    """A whole-number setting within [minimum, maximum]."""
    raw = env_str(env, name)
    if raw is None:
        return default
    if not raw.lstrip("-").isdigit():
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    value = int(raw)
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {raw!r}")
    return value


def env_url(env: Mapping[str, str], name: str, default: str, *, schemes: tuple[str, ...]) -> str:
    """A URL setting with one of ``schemes``."""
    value = env_str(env, name, default) or default
    try:
        parts = urlsplit(value)
    except ValueError:  # an unbalanced [ in the host
        parts = urlsplit("")
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        raise ConfigError(f"{name} must be a {' or '.join(schemes)} URL, got {redact_url(value)!r}")
    return value


def env_flag(env: Mapping[str, str], name: str) -> bool:
    """A 0/1 switch; anything else is an error rather than a guess."""
    raw = env_str(env, name, "0")
    if raw not in {"0", "1"}:
        raise ConfigError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def env_choice(env: Mapping[str, str], name: str, default: str, *, choices: tuple[str, ...]) -> str:
    """One of ``choices``; anything else is an error rather than a guess."""
    value = env_str(env, name, default) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_address(env: Mapping[str, str], name: str, default: str) -> str:
    """An IP address to listen on; a host name would resolve to whichever address came first."""
    value = env_str(env, name, default) or default
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{name} must be an IP address to listen on, got {value!r}") from None
    return value


def env_secret(env: Mapping[str, str], name: str) -> tuple[str, str | None]:
    """``name`` itself, or the contents of the file ``name``_FILE names: a Docker secret.

    Returns where the value came from (for messages, which never echo the value)
    and the value, or None when neither is set. Setting both is an error rather
    than a silent choice. A file is read as UTF-8 with its line endings removed
    from the end only: a secret file is usually written with one.
    """
    inline, path = env_str(env, name), env_str(env, f"{name}_FILE")
    if inline and path:
        raise ConfigError(f"set {name} or {name}_FILE, not both")
    if not path:
        return name, inline
    source = f"{name}_FILE ({path})"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise ConfigError(f"{source} cannot be read: {error.strerror}") from None
    except UnicodeError:
        raise ConfigError(f"{source} is not a UTF-8 text file") from None
    return source, text.rstrip("\r\n")


#: Settings that hold a credential and may come from a file instead (``X_FILE``):
#: Docker and Kubernetes hand secrets over as files, never in the environment that
#: ``docker inspect`` and /proc/<pid>/environ show.
SECRET_FILE_VARIABLES = ("IAMPORT_SECRET_FILE", "REDIS_URL_FILE", "BROKER_URL_FILE")


def with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with each ``X_FILE`` of SECRET_FILE_VARIABLES read into ``X``.

    The parsers below then read one variable whichever way it was given.
    """
    resolved = dict(env)
    for file_variable in SECRET_FILE_VARIABLES:
        name = file_variable.removesuffix("_FILE")
        source, value = env_secret(env, name)
        if source != name:
            if not value:
                raise ConfigError(f"{source} is empty")
            resolved[name] = value
    return resolved


def fernet_keys(env: Mapping[str, str]) -> list[str]:
    """PII_ENCRYPTION_KEYS, or the file PII_ENCRYPTION_KEYS_FILE names: Fernet keys, newest first.

    Each key is checked for shape here (32 bytes, url-safe base64), so a typo
    stops the process at start; a key's value is never echoed.
    """
    source, text = env_secret(env, "PII_ENCRYPTION_KEYS")
    keys = [key for key in re.split(r"[,\s]+", text or "") if key]
    for position, key in enumerate(keys, start=1):
        try:
            raw = base64.urlsafe_b64decode(key.encode("ascii"))
        except (ValueError, UnicodeError):
            raw = b""
        if len(raw) != 32:
            raise ConfigError(
                f"{source}: key {position} is not a Fernet key (32 url-safe base64 bytes)"
            )
    if source != "PII_ENCRYPTION_KEYS" and not keys:
        raise ConfigError(f"{source} holds no key")
    return keys


# Celery reads these itself and lets them override this module.
SHADOWING_CELERY_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)


def refuse_celery_variables(env: Mapping[str, str]) -> None:
    """Stop at start when a Celery variable would silently override REDIS_URL or BROKER_URL.

    The one exception is the ``celery`` command's own echo: it reads
    BROKER_URL (as the envvar of ``--broker``) and copies it, unchanged, into
    CELERY_BROKER_URL. That copy says nothing BROKER_URL does not.
    """
    present = [
        name
        for name in SHADOWING_CELERY_VARIABLES
        if env.get(name)
        and not (name == "CELERY_BROKER_URL" and env.get(name) == env.get("BROKER_URL"))
    ]
    if present:
        raise ConfigError(
            f"{', '.join(present)} is set (also by `celery --broker`); this worker reads "
            "REDIS_URL and BROKER_URL only. Unset it and set REDIS_URL or BROKER_URL instead."
        )


# -- connecting securely -----------------------------------------------------------

#: Files a rediss:// REDIS_URL may name in its query, under redis-py's names.
REDIS_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
#: The values redis-py reads as false.
_FALSE_WORDS = frozenset({"0", "F", "FALSE", "N", "NO"})


def redis_tls(url: str, name: str = "REDIS_URL") -> tuple[str, dict[str, Any] | None]:
    """A Redis URL with certificate verification written into it, and ``broker_use_ssl`` to match.

    Left alone, a ``rediss://`` broker URL is not safe: kombu connects without
    checking the server's certificate (``CERT_NONE``, with a warning only) and,
    under our own transport class, without TLS at all; and both kombu and
    redis-py obey ``ssl_cert_reqs=none`` in the URL. So the URL gets an
    explicit ``ssl_cert_reqs=required``, which kombu and redis-py both read,
    and any option that would weaken verification stops the process instead.
    A private CA is trusted with ``ssl_ca_certs=<file>``; ``ssl_certfile`` and
    ``ssl_keyfile`` give a client certificate. Error messages name the setting
    (``name``: REDIS_URL or BROKER_URL) and never echo the URL: it may hold a
    password.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if parts.scheme != "rediss":
        for key, _ in query:
            if key.startswith("ssl_"):
                raise ConfigError(f"{name}: {key} needs a rediss:// (TLS) URL")
        return url, None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    given_reqs = False
    for key, value in query:
        if key == "ssl_cert_reqs":
            if value != "required":
                raise ConfigError(
                    f"{name}: ssl_cert_reqs={value} is refused: certificate verification "
                    "stays on. Leave ssl_cert_reqs out, and trust a private CA with "
                    "ssl_ca_certs=/path/to/ca.pem"
                )
            given_reqs = True
        elif key == "ssl_check_hostname":
            if value.strip().upper() in _FALSE_WORDS:
                raise ConfigError(
                    f"{name}: ssl_check_hostname=false is refused: any certificate from a "
                    "trusted CA would pass. Connect by a name (or IP) that the certificate lists"
                )
        elif key in REDIS_TLS_FILES:
            if not os.path.isfile(value):
                raise ConfigError(f"{name}: {key}={value} is not a file")
            options[key] = value
        elif key.startswith("ssl_"):
            raise ConfigError(
                f"{name}: {key} is not supported; use ssl_ca_certs, ssl_certfile, ssl_keyfile"
            )
    if not given_reqs:
        query_text = "&".join(filter(None, [parts.query, "ssl_cert_reqs=required"]))
        url = urlunsplit(parts._replace(query=query_text))
    return url, options


def is_loopback(host: str | None) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1: traffic that never leaves the machine."""
    if not host:
        return False
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def refuse_plain_http(url: str, *, allow_http: bool) -> None:
    """Stop when IAMPORT_API_URL would send the i'mport key and secret unencrypted.

    Plain http is fine on loopback (the sandbox under ``make run`` and the
    tests) and, with IAMPORT_ALLOW_HTTP=1, on a private network such as the
    compose stack's ``http://sandbox:8787``; anywhere else it is a typo.
    """
    parts = urlsplit(url)
    if parts.scheme == "http" and not allow_http and not is_loopback(parts.hostname):
        raise ConfigError(
            f"IAMPORT_API_URL={redact_url(url)} is plain http: the i'mport key and secret "
            "would cross the network unencrypted. Use https, or set IAMPORT_ALLOW_HTTP=1 for a "
            "sandbox on a private network"
        )


#: The variables requests reads for another CA bundle (only when verification is on).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def check_ca_bundles(env: Mapping[str, str]) -> None:
    """Stop at start when requests would be pointed at a CA bundle that is not there.

    requests reads these only to *replace* the trusted CAs; an empty value is
    ignored, so neither can turn verification off. A path that does not exist,
    though, makes every request raise a bare OSError mid-task.
    """
    # requests takes the first one that is not empty, as here.
    name = next((name for name in CA_BUNDLE_VARIABLES if env.get(name)), None)
    if name is not None and not os.path.exists(env[name]):
        raise ConfigError(
            f"{name}={env[name]} does not exist; it names the CAs that i'mport's "
            "certificate is checked against"
        )


# -- the broker ----------------------------------------------------------------------

REDIS_SCHEMES = ("redis", "rediss", "unix")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def is_redis_url(url: str) -> bool:
    """Whether a broker URL is Redis (else RabbitMQ): the transport settings differ."""
    return urlsplit(url).scheme in REDIS_SCHEMES


def amqp_tls(url: str) -> dict[str, Any] | None:
    """``broker_use_ssl`` for a RabbitMQ URL: an ``amqps://`` broker is always verified.

    py-amqp given just ``ssl=True`` checks the certificate against the system's
    CAs but not the host name; naming ``server_hostname`` (kombu fills in the
    URL's host) turns the host name check on. Query options are refused: they
    are the way kombu's URL parsing could weaken this.
    """
    parts = urlsplit(url)
    if parts.query:
        raise ConfigError("BROKER_URL: a RabbitMQ URL takes no query options here")
    if parts.scheme != "amqps":
        return None
    return {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}


QUEUE_TYPES = ("quorum", "classic")


# -- the time rule -------------------------------------------------------------

#: The most HTTP requests one attempt can make: up to five API calls (receipt
#: lookup, payment lookup, POST, and the lookup pair again after an ambiguous
#: answer), each of which may fetch a token, get a 401, renew it and resend.
MAX_HTTP_REQUESTS_PER_ATTEMPT = 20
#: Slack for Redis round trips, event publishing and scheduling delays.
VISIBILITY_MARGIN_SECONDS = 10


def longest_attempt_seconds(iamport_timeout: float) -> float:
    """The longest one attempt can run: every request waits out connect and read.

    The thread pool ignores Celery's time limits, so these timeouts are the
    real bound on a task.
    """
    return MAX_HTTP_REQUESTS_PER_ATTEMPT * 2 * iamport_timeout


def settle_bound(bounds: Mapping[str, float]) -> float:
    """The largest bound on late processing of every provider configured (0 with none).

    One worker serves every provider, and a lease or a redelivery cannot tell
    whose request a dead worker had in flight: they wait out the longest.
    (PortOne V2's PORTONE_SETTLE_SECONDS joins IAMPORT_SETTLE_SECONDS here.)
    """
    return max(bounds.values(), default=0.0)


def lease_seconds(iamport_timeout: float, settle_seconds: float) -> float:
    """How long a claim holds: one attempt's worst case, then the bound on late processing.

    A job taken over after its worker died mid-POST is looked up no earlier
    than the bound after that POST was sent, even if the send time was never
    recorded.
    """
    return longest_attempt_seconds(iamport_timeout) + settle_seconds + VISIBILITY_MARGIN_SECONDS


def minimum_visibility_timeout(
    *,
    iamport_timeout: float,
    longest_countdown: float,
    duplicate_wait: float,
    settle_seconds: float,
) -> int:
    """The smallest safe visibility timeout, in whole seconds.

    A retry is a new message that a worker fetches at once and holds, unacked,
    until its countdown ends; kombu starts the visibility clock at the fetch.
    Then the message may wait up to ``DUPLICATE_WAIT`` for another task's job
    before it claims the job, and makes one attempt: a message that is fenced
    out and claims again hands the job on to a new message instead of
    attempting twice (tasks/receipts.py). So the timeout must cover all three,
    or Redis hands the message to a second worker while the first still has it.
    A message redelivered because its worker died mid-POST must also come after
    the bound on late processing (``settle_seconds``), like a lease.
    """
    return math.ceil(
        longest_countdown + duplicate_wait + lease_seconds(iamport_timeout, settle_seconds)
    )


# -- the settings ----------------------------------------------------------------

refuse_celery_variables(os.environ)
# IAMPORT_SECRET, REDIS_URL and BROKER_URL may each come from a file (X_FILE).
_env = with_secret_files(os.environ)

# REDIS_URL: the Redis of our own clients (ledger, token cache, events, parked
# messages, the ingress stream), and the broker too unless BROKER_URL says otherwise.
# The name matters: Celery masks the password of a setting whose name holds
# "backend" (and of broker_url) in `celery inspect conf`, `celery report` and
# Flower; a plain "redis_url" would be shown whole.
ledger_backend_url, _redis_ssl = redis_tls(
    env_url(_env, "REDIS_URL", "redis://localhost:6379/0", schemes=REDIS_SCHEMES)
)
# BROKER_URL: where task messages travel. Redis (REDIS_URL's server when unset)
# or RabbitMQ (amqp://, amqps://), for teams whose queue outgrew one Redis.
_broker = env_str(_env, "BROKER_URL")
if _broker is None:
    broker_url, broker_use_ssl = ledger_backend_url, _redis_ssl
else:
    broker_url = env_url(_env, "BROKER_URL", _broker, schemes=REDIS_SCHEMES + AMQP_SCHEMES)
    if is_redis_url(broker_url):
        broker_url, broker_use_ssl = redis_tls(broker_url, "BROKER_URL")
        if broker_url != _broker:
            # The celery command hands BROKER_URL to kombu as written, past this module.
            raise ConfigError(
                "BROKER_URL: a rediss:// broker URL must say ssl_cert_reqs=required itself"
            )
    else:
        broker_use_ssl = amqp_tls(broker_url)
broker_is_redis = is_redis_url(broker_url)
iamport_api_url = env_url(
    _env, "IAMPORT_API_URL", "https://api.iamport.kr", schemes=("https", "http")
)
iamport_allow_http = env_flag(_env, "IAMPORT_ALLOW_HTTP")
refuse_plain_http(iamport_api_url, allow_http=iamport_allow_http)
check_ca_bundles(_env)
iamport_key = env_str(_env, "IAMPORT_KEY")
iamport_secret = env_str(_env, "IAMPORT_SECRET")
iamport_timeout = env_number(_env, "IAMPORT_TIMEOUT", 10.0, minimum=0.1, maximum=120.0)
# How long after a request was sent i'mport may still act on it (README, "The
# limit of the guarantee"). i'mport publishes no bound; PortOne's own SDK waits
# 60 s for an answer, so 60 s, and never less than our read timeout by default.
iamport_settle_seconds = env_number(
    _env, "IAMPORT_SETTLE_SECONDS", max(60.0, iamport_timeout), minimum=0.0, maximum=3600.0
)
# Every provider's bound; the lease and the visibility timeout wait out the largest.
settle_seconds = settle_bound({"iamport": iamport_settle_seconds})
retry_backoff_base = env_number(_env, "RETRY_BACKOFF_BASE", 1.0, minimum=0.01, maximum=3600.0)
retry_backoff_max = env_number(_env, "RETRY_BACKOFF_MAX", 300.0, minimum=0.01, maximum=3600.0)
# 60 attempts of full-jitter backoff capped at 300 s span about 2 hours on
# average, and under an hour for fewer than one job in a billion: an hour-long
# i'mport outage is ridden out. (With 40, about 0.7% of jobs gave up within the
# hour: full jitter makes single delays short.)
retry_max_attempts = env_int(_env, "RETRY_MAX_ATTEMPTS", 60, minimum=1, maximum=1000)
# Delays up to this are Celery countdowns; longer ones park the job in the
# ledger and the sweeper resumes it, so no countdown outlives the visibility
# timeout and a long outage holds no message in any worker's memory.
retry_countdown_max = env_number(_env, "RETRY_COUNTDOWN_MAX", 30.0, minimum=0.0, maximum=3600.0)
issuance_failed_max_attempts = env_int(
    _env, "ISSUANCE_FAILED_MAX_ATTEMPTS", 3, minimum=1, maximum=100
)
result_stream = env_str(_env, "RESULT_STREAM", "cash_receipt.events") or "cash_receipt.events"
result_stream_retention = env_int(
    _env, "RESULT_STREAM_RETENTION", 7 * 24 * 3600, minimum=60, maximum=365 * 24 * 3600
)

if retry_backoff_base > retry_backoff_max:
    raise ConfigError(
        f"RETRY_BACKOFF_BASE ({retry_backoff_base:g}) is larger than RETRY_BACKOFF_MAX "
        f"({retry_backoff_max:g})"
    )

# How long a duplicate message waits for the job in flight before it retries.
duplicate_wait = env_number(_env, "DUPLICATE_WAIT", 20.0, minimum=0.0, maximum=600.0)

_longest_countdown = min(retry_backoff_max, retry_countdown_max)
_minimum_visibility = minimum_visibility_timeout(
    iamport_timeout=iamport_timeout,
    longest_countdown=_longest_countdown,
    duplicate_wait=duplicate_wait,
    settle_seconds=settle_seconds,
)
broker_visibility_timeout = env_int(
    _env, "BROKER_VISIBILITY_TIMEOUT", _minimum_visibility, minimum=1, maximum=7 * 24 * 3600
)
if broker_visibility_timeout < _minimum_visibility:
    raise ConfigError(
        f"BROKER_VISIBILITY_TIMEOUT={broker_visibility_timeout} is too short: a task can wait "
        f"{_longest_countdown:g}s (the smaller of RETRY_BACKOFF_MAX and RETRY_COUNTDOWN_MAX), "
        f"wait {duplicate_wait:g}s for a duplicate (DUPLICATE_WAIT) and then run "
        f"{longest_attempt_seconds(iamport_timeout):g}s ({MAX_HTTP_REQUESTS_PER_ATTEMPT} requests "
        f"x 2 x IAMPORT_TIMEOUT) and its POST may be acted on {settle_seconds:g}s later "
        f"(IAMPORT_SETTLE_SECONDS), so it must be at least {_minimum_visibility}; leave it unset "
        "to derive it"
    )

# Threads per worker process. A task spends nearly all its time waiting on
# i'mport (100-500 ms), so one process keeps 64 in flight: 320 receipts/s at
# 200 ms, about what one process's CPU (one core, under the GIL) can serve
# here (README, Performance). Run one process per core to use the others.
worker_concurrency = env_int(_env, "WORKER_CONCURRENCY", 64, minimum=1, maximum=1000)

# The ledger (worker/ledger.py). A claim lasts one attempt's worst case and the
# bound on late processing; past that the sweeper hands the job to another
# task, so a job whose worker died resumes after this lease, well inside the
# visibility timeout.
ledger_lease_seconds = lease_seconds(iamport_timeout, settle_seconds)
ledger_retention = env_int(
    _env, "LEDGER_RETENTION", 30 * 24 * 3600, minimum=60, maximum=365 * 24 * 3600
)
sweep_interval = env_number(_env, "SWEEP_INTERVAL", 5.0, minimum=0.1, maximum=600.0)

# The ingress (worker/ingress.py, `cashreceipt ingress`): producers XADD payment
# events to this stream, and every ingress instance reads it in this consumer group.
ingress_stream = env_str(_env, "INGRESS_STREAM", "payment.events") or "payment.events"
ingress_group = env_str(_env, "INGRESS_GROUP", "cashreceipt-ingress") or "cashreceipt-ingress"
if ingress_stream == result_stream:
    raise ConfigError(
        f"INGRESS_STREAM and RESULT_STREAM are both {ingress_stream!r}: the ingress would "
        "read the result events as payment events"
    )
# An entry pending this long is taken to belong to a dead instance and is taken
# over (XAUTOCLAIM). Handling one entry takes milliseconds; taking over one that
# a live but slow instance still holds is harmless (the task id is the same),
# only wasted work.
ingress_claim_idle = env_number(_env, "INGRESS_CLAIM_IDLE", 30.0, minimum=0.1, maximum=86400.0)

# Identifiers are sealed with these (worker.sealing). The worker and the
# producers refuse to run without one unless plaintext is explicitly allowed.
pii_encryption_keys = fernet_keys(_env)
allow_plaintext_pii = env_flag(_env, "ALLOW_PLAINTEXT_PII")

# -- logs and metrics ----------------------------------------------------------------

# LOG_FORMAT: "text", readable lines (Celery's), or "json", one object per line
# for a log shipper (worker/logs.py). Either way every line is masked.
log_format = env_choice(_env, "LOG_FORMAT", "text", choices=("text", "json"))
# A worker serves Prometheus metrics on this port (worker/metrics.py); 0 turns
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
        # kombu sweeps unacked messages every interval x throttle seconds (10 x 10
        # by default). One scan every interval, at most 10 s, resumes the message of
        # a dead worker within the visibility timeout + 10 s (+ the scan's mutex).
        "unacked_restore_interval": max(1, min(10, broker_visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
    }
    visibility_timeout = broker_visibility_timeout
    # kombu's Redis transport, except that a queue entry which is not a message is
    # parked instead of stopping the worker (worker/transport.py).
    broker_transport = "worker.transport:Transport"
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
    # (worker.retry.broker_countdown rounds up; worker.celery applies it).
    countdown_whole_seconds = broker_queue_type == "quorum"
    # The publishing pool must not run out under the thread pool (retries,
    # the sweeper): one connection per thread and some to spare.
    broker_pool_limit = worker_concurrency * 2 + 10
    # No visibility timeout: RabbitMQ redelivers an unacked message when the
    # connection that holds it closes. Its consumer_timeout (30 min by default)
    # must stay above the longest attempt (see the time rule).

# Unknown, invalid and undecodable task messages are parked, not logged whole
# and dropped (worker/consumer.py).
worker_consumer = "worker.consumer:Consumer"

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
