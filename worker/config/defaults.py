"""The defaults every reader of the settings shares: stream names and retentions.

``celeryconfig`` takes them when the environment says nothing, and the producer
helper when it is handed a bare Celery app without those settings: so the two can
never name different streams. Plain constants: importing this reads no
environment. The names are a contract with consumers and deployed data.
"""

from __future__ import annotations

#: The stream of result events (``RESULT_STREAM``).
RESULT_STREAM = "cash_receipt.events"
#: How long result events are kept, in seconds (``RESULT_STREAM_RETENTION``): 7 days.
RESULT_STREAM_RETENTION = 7 * 24 * 3600
#: How long a finished job's ledger record is kept, in seconds (``LEDGER_RETENTION``): 30 days.
LEDGER_RETENTION = 30 * 24 * 3600
#: The stream producers add payment events to (``INGRESS_STREAM``).
INGRESS_STREAM = "payment.events"
#: The consumer group every ingress instance reads it in (``INGRESS_GROUP``).
INGRESS_GROUP = "cashreceipt-ingress"
