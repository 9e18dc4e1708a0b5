"""What a PortOne V2 answer means, as a table: its type over its status; no JSON, its status."""

from __future__ import annotations

import pytest

from worker.adapters.portone.answers import error_for_answer
from worker.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    IssuanceFailed,
    NotEligible,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    UnexpectedResponse,
)
from worker.core.retry import reason_for

GATEWAY_PAGE = "<html><body>502 Bad Gateway</body></html>"


def error(
    status: int, body: object, *, changes: bool = True, headers: dict[str, str] | None = None
) -> ProviderError:
    return error_for_answer(
        "POST" if changes else "GET",
        status,
        body=body,
        headers=headers,
        now=1_000_000.0,
        request="POST /cash-receipts",
        changes=changes,
    )


def typed(kind: str, **more: object) -> dict[str, object]:
    return {"type": kind, "message": "said by PortOne", **more}


@pytest.mark.parametrize(
    ("status", "body", "changes", "expected"),
    [
        (400, typed("INVALID_REQUEST"), True, InvalidRequest),
        (401, typed("UNAUTHORIZED"), True, AuthenticationFailed),
        (403, typed("FORBIDDEN"), True, AuthenticationFailed),
        (404, typed("CHANNEL_NOT_FOUND"), True, InvalidRequest),
        (404, typed("PAYMENT_NOT_FOUND"), False, NotEligible),
        (409, typed("CASH_RECEIPT_ALREADY_ISSUED"), True, InvalidRequest),
        (404, typed("CASH_RECEIPT_NOT_ISSUED"), True, InvalidRequest),
        (502, typed("PG_PROVIDER", pgCode="C1", pgMessage="refused"), True, IssuanceFailed),
        # A lookup the PG failed is only "not now".
        (502, typed("PG_PROVIDER", pgCode="C1", pgMessage="down"), False, ProviderUnavailable),
        # The type overrides the status: a typed 200 or 500 is what its type says.
        (500, typed("INVALID_REQUEST"), True, InvalidRequest),
        # Still being processed under this key (UNCONFIRMED): the outcome is unknown.
        (409, typed("IDEMPOTENCY_OUTSTANDING_REQUEST"), True, OutcomeUnknown),
        # Any other idempotency error: refused without acting; look, then a new key.
        (422, typed("IDEMPOTENCY_KEY_MISMATCH"), True, ProviderUnavailable),
        # A type this release does not know: by its status.
        (503, typed("SOMETHING_NEW"), True, OutcomeUnknown),
        (503, typed("SOMETHING_NEW"), False, ProviderUnavailable),
        (429, typed("SOMETHING_NEW"), True, RateLimited),
        (400, typed("SOMETHING_NEW"), True, InvalidRequest),
        # No PortOne JSON: something in between answered. A change's outcome is unknown.
        (502, GATEWAY_PAGE, True, OutcomeUnknown),
        (500, None, True, OutcomeUnknown),
        (409, None, True, OutcomeUnknown),
        (200, None, True, OutcomeUnknown),
        (502, GATEWAY_PAGE, False, ProviderUnavailable),
        (429, None, False, RateLimited),
        (401, GATEWAY_PAGE, False, AuthenticationFailed),
        (404, GATEWAY_PAGE, False, UnexpectedResponse),
    ],
)
def test_each_answer_is_one_error(
    status: int, body: object, changes: bool, expected: type[ProviderError]
) -> None:
    found = error(status, body, changes=changes)
    assert type(found) is expected
    assert found.status == status


def test_a_pg_refusal_keeps_its_code_and_message_masked() -> None:
    found = error(502, typed("PG_PROVIDER", pgCode="E01", pgMessage="번호 01012345678 거절"))
    assert "E01" in str(found) and "01012345678" not in str(found)
    assert found.provider_message is not None and "01012345678" not in found.provider_message
    assert reason_for(found) == "rejected"


def test_retry_after_is_read_from_an_empty_body() -> None:
    found = error(503, None, changes=False, headers={"Retry-After": "7"})
    assert isinstance(found, ProviderUnavailable)
    assert found.retry_after == 7
