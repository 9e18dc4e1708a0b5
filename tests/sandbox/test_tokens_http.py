"""POST /users/getToken and the token check, over HTTP."""

from __future__ import annotations

import pytest
import requests

from tests.sandbox.client import TIMEOUT, Api, failure, get_token, success
from tests.support.sandbox import Sandbox
from tests.support.wait import wait_for


def test_get_token_json(sandbox: Sandbox) -> None:
    """JSON credentials get access_token, now and expired_at 30 minutes later."""
    body = get_token(sandbox.url)
    assert body["code"] == 0
    assert body["message"] is None
    token = body["response"]
    assert set(token) == {"access_token", "now", "expired_at"}
    assert isinstance(token["now"], int)
    assert token["expired_at"] - token["now"] == 1800
    assert len(token["access_token"]) == 40


def test_get_token_form(sandbox: Sandbox) -> None:
    """Form-encoded credentials work too, and give the same token."""
    first = get_token(sandbox.url)["response"]
    response = requests.post(
        f"{sandbox.url}/users/getToken",
        data={"imp_key": sandbox.imp_key, "imp_secret": sandbox.imp_secret},
        timeout=TIMEOUT,
    )
    assert success(response)["access_token"] == first["access_token"]


@pytest.mark.parametrize(
    "credentials",
    [
        {"imp_key": "sandbox_key", "imp_secret": "wrong"},
        {"imp_key": "wrong", "imp_secret": "sandbox_secret"},
        {"imp_key": "sandbox_key"},
        {},
    ],
)
def test_bad_credentials_get_401(sandbox: Sandbox, credentials: dict[str, str]) -> None:
    """Wrong or missing imp_key/imp_secret is 401 in the error envelope."""
    response = requests.post(f"{sandbox.url}/users/getToken", json=credentials, timeout=TIMEOUT)
    assert "imp_key" in failure(response, 401)


def test_same_token_before_expiry(sandbox: Sandbox) -> None:
    """Asking again before expiry returns the same token and the same expired_at."""
    first = get_token(sandbox.url)["response"]
    second = get_token(sandbox.url)["response"]
    assert second["access_token"] == first["access_token"]
    assert second["expired_at"] == first["expired_at"]


def test_last_minute_extends_by_five_minutes(sandbox: Sandbox) -> None:
    """A 30 s token is born inside its last minute, so the next getToken adds 300 s once."""
    sandbox.set_token_lifetime(30)
    first = get_token(sandbox.url)["response"]
    second = get_token(sandbox.url)["response"]
    third = get_token(sandbox.url)["response"]
    assert second["access_token"] == first["access_token"]
    assert second["expired_at"] == first["expired_at"] + 300
    assert third["expired_at"] == second["expired_at"]


def test_expired_token_is_refused_and_replaced(sandbox: Sandbox, imp_uid: str) -> None:
    """After expiry the old token gets 401 and getToken mints a new one."""
    token = get_token(sandbox.url)["response"]
    api = Api(sandbox.url, token["access_token"])
    success(api.payment(imp_uid))
    sandbox.advance_clock(1800)
    failure(api.payment(imp_uid), 401)
    fresh = get_token(sandbox.url)["response"]
    assert fresh["access_token"] != token["access_token"]
    assert fresh["expired_at"] - fresh["now"] == 1800
    success(Api(sandbox.url, fresh["access_token"]).payment(imp_uid))


def test_short_lifetime_expires_in_real_time(sandbox: Sandbox, imp_uid: str) -> None:
    """With a 1 s lifetime the token dies within about a second of wall time."""
    sandbox.set_token_lifetime(1)
    api = Api(sandbox.url, get_token(sandbox.url)["response"]["access_token"])
    wait_for(lambda: api.payment(imp_uid).status_code == 401, timeout=5, message="token expiry")


def test_revoke_invalidates_every_token(sandbox: Sandbox, imp_uid: str) -> None:
    """Revoke-all: the old token gets 401 and the next getToken is a different token."""
    api = Api(sandbox.url, sandbox.get_token())
    success(api.payment(imp_uid))
    sandbox.revoke_tokens()
    failure(api.payment(imp_uid), 401)
    assert sandbox.get_token() != api.token


@pytest.mark.parametrize("style", ["bearer", "bare", "legacy"])
def test_token_header_styles(api: Api, imp_uid: str, style: str) -> None:
    """Bearer, bare Authorization and X-ImpTokenHeader are all accepted."""
    success(api.call("GET", f"/payments/{imp_uid}", style=style))


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/payments/{}"),
        ("POST", "/receipts/{}"),
        ("GET", "/receipts/{}"),
        ("DELETE", "/receipts/{}"),
    ],
)
@pytest.mark.parametrize(("style", "token"), [("none", None), ("bearer", "bad"), ("bare", "bad")])
def test_every_endpoint_needs_a_valid_token(
    api: Api, sandbox: Sandbox, imp_uid: str, method: str, path: str, style: str, token: str | None
) -> None:
    """Missing or unknown token: 401 in the envelope, and nothing is created."""
    response = api.call(
        method, path.format(imp_uid), style=style, token=token, json={"identifier": "01012345678"}
    )
    failure(response, 401)
    assert sandbox.issued_count(imp_uid) == 0


def test_authorization_wins_over_legacy_header(api: Api, imp_uid: str) -> None:
    """With both headers sent, Authorization is the one read."""
    assert api.token is not None
    response = api.call(
        "GET",
        f"/payments/{imp_uid}",
        style="none",
        headers={"Authorization": "bad", "X-ImpTokenHeader": api.token},
    )
    failure(response, 401)
