"""What an answer from i'mport means, as tables: which status and body is which error.

The i'mport adapter's half of the retry policy (:mod:`worker.adapters.iamport.answers`):
what follows from each error class is :mod:`worker.core.retry`'s, tested in
tests/unit/core/test_retry.py.
"""

from __future__ import annotations

import pytest

from tests.support.answers import STATUSES, expected_class
from worker.adapters.iamport.answers import error_for_answer, error_for_status
from worker.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    IssuanceFailed,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    TransientError,
    UnexpectedResponse,
    UnsupportedPg,
)

NOW = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
ENVELOPE = {"code": -1, "message": "msg", "response": None}
#: The bodies an answer can come with, as the client reads them: not JSON at
#: all (an empty body or an HTML page read as None), JSON that is not
#: i'mport's envelope, and the envelope.
BODIES = {
    "empty": None,
    "html": None,
    "other_json": {"error": "upstream timed out"},
    "json_list": ["not", "an", "envelope"],
    "envelope": ENVELOPE,
}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequest),
        (404, InvalidRequest),
        (408, ProviderUnavailable),  # "try again", whoever says it: not a rejection
        (425, ProviderUnavailable),
        (200, InvalidRequest),  # a 2xx with code != 0 is a business error
        (401, AuthenticationFailed),
        (429, RateLimited),
        (500, IssuanceFailed),
        (501, UnsupportedPg),
        (502, ProviderUnavailable),
        (503, ProviderUnavailable),
        (504, ProviderUnavailable),
        (599, ProviderUnavailable),
        (302, UnexpectedResponse),
    ],
)
def test_status_maps_to_error_class(status: int, expected: type[ProviderError]) -> None:
    """Each HTTP status lands in exactly the class that decides its fate."""
    error = error_for_status(status, code=-1, message="msg")
    assert type(error) is expected
    assert (error.status, error.code, error.provider_message) == (status, -1, "msg")


def test_rate_limit_keeps_retry_after() -> None:
    """A 429 carries i'mport's Retry-After into the error."""
    error = error_for_answer("POST", 429, body=ENVELOPE, headers={"Retry-After": "7"}, now=NOW)
    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0


@pytest.mark.parametrize("method", ["POST", "DELETE", "GET"])
@pytest.mark.parametrize("kind", sorted(BODIES))
@pytest.mark.parametrize("status", STATUSES)
def test_answer_maps_by_status_and_body(method: str, kind: str, status: int) -> None:
    """Every (status x body kind x method): the envelope keeps i'mport's meanings, the rest
    are a gateway's, and a "not now" from a gateway leaves a POST or DELETE ambiguous."""
    error = error_for_answer(method, status, body=BODIES[kind], headers={}, now=NOW)
    assert type(error) is expected_class(status, envelope=kind == "envelope", method=method)
    assert error.status == status
    if kind == "envelope":
        assert (error.code, error.provider_message) == (-1, "msg")


def test_token_request_500_is_transient_not_issuance_failed() -> None:
    """getToken is a POST that issues nothing: its 500 in the envelope is i'mport failing to
    answer. Read as "issuance failed", three of them ended a job `rejected` with no POST made."""
    error = error_for_answer("POST", 500, body=ENVELOPE, now=NOW, changes=False)
    assert type(error) is ProviderUnavailable
    assert type(error_for_answer("POST", 500, body=ENVELOPE, now=NOW)) is IssuanceFailed


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [
        (200, "POST", OutcomeUnknown),  # a 2xx that is not i'mport's: nobody knows what happened
        (200, "GET", ProviderUnavailable),
        (505, "POST", OutcomeUnknown),  # any 5xx without the envelope
        (599, "GET", ProviderUnavailable),
        (302, "POST", UnexpectedResponse),
    ],
)
def test_other_bare_answers(status: int, method: str, expected: type[ProviderError]) -> None:
    """Statuses outside the table's columns, without the envelope."""
    assert type(error_for_answer(method, status, body=None, now=NOW)) is expected


@pytest.mark.parametrize("kind", ["empty", "other_json", "envelope"])
@pytest.mark.parametrize("status", [429, 503])
def test_any_transient_answer_keeps_retry_after(kind: str, status: int) -> None:
    """Retry-After is honoured on every transient answer, with or without the envelope."""
    error = error_for_answer(
        "POST", status, body=BODIES[kind], headers={"Retry-After": "12"}, now=NOW
    )
    assert isinstance(error, TransientError)
    assert error.retry_after == 12.0  # type: ignore[attr-defined]
