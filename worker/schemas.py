"""The payload schemas, at the path producers import them from.

The code lives in :mod:`worker.core.schemas`; this module keeps
``from worker.schemas import InvalidPayload`` (and the rest) working and adds nothing.
"""

from __future__ import annotations

from worker.core.schemas import (
    IDENTIFIER_TYPES,
    InvalidPayload,
    PaymentCancelledSchema,
    PaymentConfirmedSchema,
    ReceiptRequest,
    identifier_problem,
    load_cancellation,
    load_payload,
)

__all__ = [
    "IDENTIFIER_TYPES",
    "InvalidPayload",
    "PaymentCancelledSchema",
    "PaymentConfirmedSchema",
    "ReceiptRequest",
    "identifier_problem",
    "load_cancellation",
    "load_payload",
]
