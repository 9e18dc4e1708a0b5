"""The defaults every reader of the settings shares: streams, retentions and timings.

``celeryconfig`` takes them when the environment says nothing, and the producer
helper when it is handed a bare Celery app without those settings: so the two can
never name different streams, or wait different times. Plain constants (the
derived two computed by the time rule in :mod:`worker.config.timing`): importing
this reads no environment. The stream names are a contract with consumers and
deployed data. celeryconfig says why each default is what it is.
"""

from __future__ import annotations

from worker.config import timing

#: REDIS_URL when unset: a Redis on this host.
REDIS_URL = "redis://localhost:6379/0"
#: ``REDIS_DURABILITY``: refuse to start on a Redis that may lose what it acknowledged
#: (``require``), or start with a warning (``accept-risk``).
REDIS_DURABILITY_CHOICES = ("require", "accept-risk")
REDIS_DURABILITY = REDIS_DURABILITY_CHOICES[0]
#: The stream of result events (``RESULT_STREAM``).
RESULT_STREAM = "cash_receipt.events"
#: How long result events are kept, in seconds (``RESULT_STREAM_RETENTION``): 7 days.
RESULT_STREAM_RETENTION = 7 * 24 * 3600
#: How long a finished job's ledger record is kept, in seconds (``LEDGER_RETENTION``): 30 days.
LEDGER_RETENTION = 30 * 24 * 3600
#: How many attempts and outcomes a payment's history keeps, newest first
#: (``cashreceipt status``): the ledger's scripts trim it to this length.
JOB_HISTORY_LENGTH = 50
#: How long a dead message (``cashreceipt parked``) is kept for an operator to look at
#: or replay, in seconds: 7 days.
DEAD_MESSAGE_RETENTION_SECONDS = 7 * 24 * 3600
#: The stream producers add payment events to (``INGRESS_STREAM``).
INGRESS_STREAM = "payment.events"
#: The consumer group every ingress instance reads it in (``INGRESS_GROUP``).
INGRESS_GROUP = "cashreceipt-ingress"

#: The providers a worker serves and producers may name (``PROVIDERS``).
PROVIDERS = ("iamport",)
#: PortOne V2's API (``PORTONE_API_URL``).
PORTONE_API_URL = "https://api.portone.io"
#: PortOne V2's read timeout (``PORTONE_TIMEOUT``): PortOne recommends at least 60 s.
PORTONE_TIMEOUT = 60.0
#: How long after a request PortOne V2 may still act on it (``PORTONE_SETTLE_SECONDS``).
PORTONE_SETTLE_SECONDS = 60.0
#: i'mport's read timeout, in seconds (``IAMPORT_TIMEOUT``).
IAMPORT_TIMEOUT = 10.0
#: How long after a request i'mport may still act on it (``IAMPORT_SETTLE_SECONDS``;
#: never less than the read timeout by default).
IAMPORT_SETTLE_SECONDS = 60.0
#: The longest backoff delay (``RETRY_BACKOFF_MAX``).
RETRY_BACKOFF_MAX = 300.0
#: The longest delay kept as a Celery countdown; longer ones park the job (``RETRY_COUNTDOWN_MAX``).
RETRY_COUNTDOWN_MAX = 30.0
#: How long a duplicate message waits for the job in flight (``DUPLICATE_WAIT``).
DUPLICATE_WAIT = 20.0
#: A claim's lease with the defaults above (celeryconfig's ``ledger_lease_seconds``).
LEDGER_LEASE_SECONDS = timing.lease_seconds(
    IAMPORT_TIMEOUT, max(IAMPORT_SETTLE_SECONDS, IAMPORT_TIMEOUT)
)
#: The broker's visibility timeout with the defaults above (``BROKER_VISIBILITY_TIMEOUT``):
#: how long the sweeper leaves a recorded job to its message before re-sending it.
VISIBILITY_TIMEOUT = timing.minimum_visibility_timeout(
    iamport_timeout=IAMPORT_TIMEOUT,
    longest_countdown=min(RETRY_BACKOFF_MAX, RETRY_COUNTDOWN_MAX),
    duplicate_wait=DUPLICATE_WAIT,
    settle_seconds=max(IAMPORT_SETTLE_SECONDS, IAMPORT_TIMEOUT),
)
