"""What a failure event's ``error`` says: its shape, decided in one place.

The ingress, which dead-letters an entry it cannot read, and the tasks, which end
a job, both publish it; neither has to import the other's machinery to agree on it.
"""

from __future__ import annotations

from typing import Any

from worker.core.schemas import InvalidPayload

# Whether a retry of the same job could still help, per failure reason.
RETRYABLE_REASONS = frozenset({"retries_exhausted", "auth", "not_eligible"})


def invalid_detail(error: InvalidPayload) -> dict[str, Any]:
    """The ``error`` of an invalid-payload event."""
    return {
        "error": {
            "reason": "invalid_payload",
            "status": None,
            "code": None,
            "message": str(error),
            "retryable": False,
            "fields": error.errors,
        }
    }


def failure_detail(
    reason: str, *, status: int | None, code: int | None, message: str
) -> dict[str, Any]:
    """The ``error`` of a failure event; ``message`` is already masked."""
    return {
        "error": {
            "reason": reason,
            "status": status,
            "code": code,
            "message": message,
            "retryable": reason in RETRYABLE_REASONS,
        }
    }
