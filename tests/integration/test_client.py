"""The i'mport client against the sandbox over HTTP: envelopes, errors, timeouts and the token."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.answers import STATUSES, expected_class
from tests.support.redis_server import RedisServer
from tests.support.sandbox import Sandbox
from tests.support.wait import free_port
from worker.adapters.iamport.client import IamportClient
from worker.adapters.iamport.tokens import RedisTokenCache
from worker.core.errors import (
    AuthenticationFailed,
    ConnectionFailed,
    InvalidRequest,
    IssuanceFailed,
    OutcomeUnknown,
    ProviderUnavailable,
    RateLimited,
    UnsupportedPg,
)
from worker.core.schemas import ReceiptRequest
from worker.core.types import JobKey

pytestmark = pytest.mark.integration


def to_issue(imp_uid: str) -> ReceiptRequest:
    """The receipt to issue: a phone number, as the smallest payload gives it."""
    return ReceiptRequest(job=JobKey.payment(imp_uid), identifier="01055554321")


class CountingSession(requests.Session):
    """A real session that counts getToken calls."""

    def __init__(self) -> None:
        super().__init__()
        self.token_requests = 0

    def request(self, method: str | bytes, url: str | bytes, *args: object, **kwargs: object):  # type: ignore[override]
        if str(url).endswith("/users/getToken"):
            self.token_requests += 1
        return super().request(method, url, *args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def session() -> Iterator[CountingSession]:
    """A fresh HTTP session per test."""
    with CountingSession() as counting:
        yield counting


@pytest.fixture
def cache(redis_server: RedisServer) -> RedisTokenCache:
    """The shared token cache on the private Redis, emptied of earlier tokens."""
    client = redis_server.client()
    for key in client.scan_iter("iamport:token:*"):
        client.delete(key)
    return RedisTokenCache(client)


def make_client(
    sandbox: Sandbox,
    session: requests.Session,
    cache: RedisTokenCache,
    *,
    secret: str | None = None,
    url: str | None = None,
) -> IamportClient:
    """A client configured as a worker process builds it."""
    return IamportClient(
        base_url=url or sandbox.url,
        imp_key=sandbox.imp_key,
        imp_secret=secret or sandbox.imp_secret,
        session=session,
        token_cache=cache,
        timeout=0.5,
    )


def test_issue_returns_a_typed_receipt(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """A 200 with code 0 becomes a Receipt; the token is fetched once and then shared."""
    client = make_client(sandbox, session, cache)
    receipt = client.issue_receipt(to_issue(imp_uid))
    assert (receipt.imp_uid, receipt.amount, receipt.vat, receipt.active) == (
        imp_uid,
        11000,
        1000,
        True,
    )
    assert client.find_receipt(imp_uid) == receipt
    other = make_client(sandbox, requests.Session(), cache)
    assert other.get_payment(imp_uid).cash_receipt_issued is True
    assert session.token_requests == 1


def test_lookup_of_a_missing_receipt_is_none(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """404 on GET /receipts reads as "no receipt", not as an error."""
    assert make_client(sandbox, session, cache).find_receipt(imp_uid) is None


def test_list_receipts_is_the_newest_one_or_none(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """V1 keeps one receipt per payment: the list is empty, then that one; after a
    cancellation, the cancelled one (a list of what exists, not of what is live)."""
    client = make_client(sandbox, session, cache)
    assert client.list_receipts(imp_uid) == []
    issued = client.issue_receipt(to_issue(imp_uid))
    assert client.list_receipts(imp_uid) == [issued]
    cancelled = client.cancel_receipt(imp_uid)
    assert [(r.receipt_tid, r.active) for r in client.list_receipts(imp_uid)] == [
        (cancelled.receipt_tid, False)
    ]


@pytest.mark.parametrize(
    ("step", "error_class", "status"),
    [
        ({"kind": "status", "status": 500}, IssuanceFailed, 500),
        ({"kind": "reject", "message": "PG says no"}, IssuanceFailed, 500),
        ({"kind": "status", "status": 502}, ProviderUnavailable, 502),
        ({"kind": "status", "status": 503}, ProviderUnavailable, 503),
        ({"kind": "status", "status": 504}, ProviderUnavailable, 504),
        ({"kind": "rate_limit", "retry_after": 3}, RateLimited, 429),
        ({"kind": "drop_before"}, OutcomeUnknown, None),
        ({"kind": "drop_after"}, OutcomeUnknown, None),
        ({"kind": "hang", "seconds": 3}, OutcomeUnknown, None),
        # A gateway's HTML page: whatever its status, nobody knows whether i'mport acted
        # (a gateway gives up on i'mport while i'mport goes on). It used to read a 5xx page
        # as "i'mport is down", which let a POST be re-sent without waiting out the bound.
        ({"kind": "garbage", "status": 502}, OutcomeUnknown, 502),
        ({"kind": "garbage", "status": 200}, OutcomeUnknown, 200),
    ],
)
def test_post_failures_map_to_the_error_tree(
    sandbox: Sandbox,
    session: CountingSession,
    cache: RedisTokenCache,
    imp_uid: str,
    step: dict[str, object],
    error_class: type[Exception],
    status: int | None,
) -> None:
    """Every fault lands in its class, with the provider's status and message kept."""
    sandbox.admin.script(imp_uid, {**step, "method": "POST"})
    with pytest.raises(error_class) as caught:
        make_client(sandbox, session, cache).issue_receipt(to_issue(imp_uid))
    assert getattr(caught.value, "status", None) == status
    if step["kind"] == "reject":
        assert caught.value.provider_message == "PG says no"  # type: ignore[attr-defined]
    if step["kind"] == "rate_limit":
        assert caught.value.retry_after == 3  # type: ignore[attr-defined]


BODY_KINDS = ("empty", "html", "json", "envelope")


@pytest.mark.parametrize("method", ["POST", "DELETE", "GET"])
@pytest.mark.parametrize("body_kind", BODY_KINDS)
@pytest.mark.parametrize("status", STATUSES)
def test_every_status_with_every_body(
    sandbox: Sandbox,
    session: CountingSession,
    cache: RedisTokenCache,
    imp_uid: str,
    status: int,
    body_kind: str,
    method: str,
) -> None:
    """Each (status x body kind) over HTTP, through the real client, for each method."""
    endpoint = "payments" if method == "GET" else "receipts"
    step = {"kind": "answer", "status": status, "body_kind": body_kind}
    step = {**step, "method": method, "endpoint": endpoint}
    # i'mport's own 401 renews the token once and resends: that one meets the 401 too.
    sandbox.admin.script(imp_uid, *[step] * (2 if (status, body_kind) == (401, "envelope") else 1))
    client = make_client(sandbox, session, cache)
    call = {
        "POST": lambda: client.issue_receipt(to_issue(imp_uid)),
        "DELETE": lambda: client.cancel_receipt(imp_uid),
        "GET": lambda: client.get_payment(imp_uid),
    }[method]
    expected = expected_class(status, envelope=body_kind == "envelope", method=method)
    with pytest.raises(expected) as caught:
        call()
    assert caught.value.status == status  # type: ignore[attr-defined]
    assert sandbox.admin.issued_count(imp_uid) == 0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("7", 7.0), ("in a while", None), (None, None)],
)
def test_retry_after_in_seconds_travels(
    sandbox: Sandbox,
    session: CountingSession,
    cache: RedisTokenCache,
    imp_uid: str,
    header: str | None,
    seconds: float | None,
) -> None:
    """A bare 503's Retry-After reaches the error, as does a bare 429's."""
    step: dict[str, object] = {"kind": "answer", "status": 503, "body_kind": "html"}
    if header is not None:
        step["retry_after"] = header
    sandbox.admin.script(imp_uid, {**step, "method": "POST"})
    with pytest.raises(OutcomeUnknown) as caught:
        make_client(sandbox, session, cache).issue_receipt(to_issue(imp_uid))
    assert caught.value.retry_after == seconds


def test_retry_after_as_an_http_date(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """A 429 whose Retry-After is a date 30 s ahead waits about 30 s."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    step = {"kind": "answer", "status": 429, "body_kind": "empty", "retry_after": when}
    sandbox.admin.script(imp_uid, {**step, "method": "GET"})
    with pytest.raises(RateLimited) as caught:
        make_client(sandbox, session, cache).get_payment(imp_uid)
    assert caught.value.retry_after is not None
    assert 25 <= caught.value.retry_after <= 30


def test_a_lost_lookup_is_only_transient(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """A GET changes nothing, so its hang is a plain transient error, not an unknown outcome."""
    sandbox.admin.script(imp_uid, {"kind": "hang", "seconds": 3, "method": "GET"})
    with pytest.raises(ProviderUnavailable):
        make_client(sandbox, session, cache).find_receipt(imp_uid)


def test_permanent_answers(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """400 and 501 keep i'mport's status, code and message."""
    client = make_client(sandbox, session, cache)
    client.issue_receipt(to_issue(imp_uid))
    with pytest.raises(InvalidRequest) as caught:
        client.issue_receipt(to_issue(imp_uid))
    assert caught.value.status == 400
    assert caught.value.code not in (0, None)
    assert caught.value.provider_message
    sandbox.admin.seed_payment(f"{imp_uid}_p", pg_provider="payco")
    with pytest.raises(UnsupportedPg):
        client.issue_receipt(to_issue(f"{imp_uid}_p"))


def test_refused_connection_is_a_connection_failure(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache
) -> None:
    """Nothing listening: the request never left, so it is safe to resend."""
    client = make_client(sandbox, session, cache, url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionFailed):
        client.get_payment("imp_x")


def test_bad_credentials(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache
) -> None:
    """getToken's 401 is AuthenticationFailed, asked once, not retried."""
    with pytest.raises(AuthenticationFailed):
        make_client(sandbox, session, cache, secret="wrong").get_payment("imp_x")
    assert session.token_requests == 1


def test_revoked_token_is_renewed_once(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """A 401 on the cached token: one renewal, one resend, success."""
    client = make_client(sandbox, session, cache)
    client.get_payment(imp_uid)
    sandbox.admin.revoke_tokens()
    assert client.get_payment(imp_uid).imp_uid == imp_uid
    assert session.token_requests == 2


def test_token_that_expires_mid_run_is_renewed(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """The sandbox's clock passes expiry while our cache still holds the token: renewed on 401."""
    client = make_client(sandbox, session, cache)
    client.get_payment(imp_uid)
    sandbox.admin.advance_clock(31 * 60)
    assert client.issue_receipt(to_issue(imp_uid)).active
    assert session.token_requests == 2
    statuses = [r["status"] for r in sandbox.admin.requests(imp_uid)]
    assert statuses[-2:] == [401, 200]


def test_short_lived_token_is_renewed_before_it_expires(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, redis_server: RedisServer
) -> None:
    """The cache drops a token ahead of i'mport's expiry, so no call ever meets a 401."""
    sandbox.admin.set_token_lifetime(2)
    sandbox.admin.revoke_tokens()
    try:
        client = make_client(sandbox, session, cache)
        client.get_payment("imp_short")
        ttl_ms = redis_server.client().pttl(
            next(redis_server.client().scan_iter("iamport:token:*"))
        )
        assert 0 < ttl_ms <= 1000
    finally:
        sandbox.admin.set_token_lifetime(1800)


def test_every_request_is_observed_with_its_endpoint_and_status(
    sandbox: Sandbox, session: CountingSession, cache: RedisTokenCache, imp_uid: str
) -> None:
    """The latency histogram's feed: each request once, no imp_uid in it, 'none' for no answer."""
    seen: list[tuple[str, str, str, float]] = []
    client = IamportClient(
        base_url=sandbox.url,
        imp_key=sandbox.imp_key,
        imp_secret=sandbox.imp_secret,
        session=session,
        token_cache=cache,
        timeout=0.5,
        observe=lambda method, endpoint, status, seconds: seen.append(
            (method, endpoint, status, seconds)
        ),
    )
    sandbox.admin.script(imp_uid, {"kind": "latency", "ms": 200, "method": "POST"})
    client.issue_receipt(to_issue(imp_uid))
    sandbox.admin.script(imp_uid, {"kind": "hang", "seconds": 3, "method": "GET"})
    with pytest.raises(ProviderUnavailable):
        client.find_receipt(imp_uid)
    assert [entry[:3] for entry in seen] == [
        ("POST", "token", "200"),
        ("POST", "receipts", "200"),
        ("GET", "receipts", "none"),
    ]
    assert seen[1][3] >= 0.2  # the scripted latency is inside the measured time
    assert seen[2][3] >= 0.5  # so is the read timeout
