"""Deliberately plain i'mport and PortOne V2 clients for the sandbox tests: one new connection
per call.

A fresh connection per call keeps one test's dropped socket from leaking into the next request.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
import requests

TIMEOUT = 5.0


class Api:
    """Calls i'mport's endpoints on a sandbox with a given token and header style."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url
        self.token = token

    def headers(self, style: str = "bearer", token: str | None = None) -> dict[str, str]:
        token = self.token if token is None else token
        if token is None or style == "none":
            return {}
        if style == "bearer":
            return {"Authorization": f"Bearer {token}"}
        if style == "bare":
            return {"Authorization": token}
        return {"X-ImpTokenHeader": token}

    def call(
        self,
        method: str,
        path: str,
        *,
        style: str = "bearer",
        token: str | None = None,
        timeout: float = TIMEOUT,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        return requests.request(
            method,
            f"{self.url}{path}",
            headers={**self.headers(style, token), **(headers or {})},
            timeout=timeout,
            **kwargs,
        )

    def issue(self, imp_uid: str, **body: Any) -> requests.Response:
        body.setdefault("identifier", "01012345678")
        return self.call("POST", f"/receipts/{imp_uid}", json=body)

    def lookup(self, imp_uid: str) -> requests.Response:
        return self.call("GET", f"/receipts/{imp_uid}")

    def cancel(self, imp_uid: str) -> requests.Response:
        return self.call("DELETE", f"/receipts/{imp_uid}")

    def issue_external(self, merchant_uid: str, **body: Any) -> requests.Response:
        """A valid body unless overridden; a field given as None is left out."""
        defaults = {
            "channel_key": "channel-key-sandbox",
            "name": "현금 주문",
            "amount": 11000,
            "identifier": "01012345678",
        }
        sent = {k: v for k, v in {**defaults, **body}.items() if v is not None}
        return self.call("POST", f"/receipts/external/{merchant_uid}", json=sent)

    def lookup_external(self, merchant_uid: str) -> requests.Response:
        return self.call("GET", f"/receipts/external/{merchant_uid}")

    def cancel_external(self, merchant_uid: str) -> requests.Response:
        return self.call("DELETE", f"/receipts/external/{merchant_uid}")

    def payment(self, imp_uid: str) -> requests.Response:
        return self.call("GET", f"/payments/{imp_uid}")


def get_token(url: str, key: str = "sandbox_key", secret: str = "sandbox_secret") -> Any:  # noqa: S107 - documented sandbox default
    """The getToken envelope, as JSON."""
    response = requests.post(
        f"{url}/users/getToken", json={"imp_key": key, "imp_secret": secret}, timeout=TIMEOUT
    )
    return response.json()


def failure(response: requests.Response, status: int) -> str:
    """Assert an error envelope with this status and return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] != 0
    assert body["response"] is None
    assert isinstance(body["message"], str)
    assert body["message"]
    return str(body["message"])


def success(response: requests.Response) -> dict[str, Any]:
    """Assert a 200 success envelope and return its `response`."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["code"] == 0
    assert body["message"] is None
    result: dict[str, Any] = body["response"]
    return result


class PortOneApi:
    """Calls PortOne V2's cash-receipt endpoints under a sandbox's /portone, as a worker would."""

    def __init__(self, url: str, secret: str = "sandbox_portone_secret") -> None:  # noqa: S107 - the documented sandbox default
        self.url = url
        self.secret = secret

    def call(
        self,
        method: str,
        path: str,
        *,
        auth: str | None = "default",
        idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
        **kwargs: Any,
    ) -> requests.Response:
        """`auth` is the whole Authorization value (None: no header); the key is sent quoted."""
        sent: dict[str, str] = {}
        if auth == "default":
            sent["Authorization"] = f"PortOne {self.secret}"
        elif auth is not None:
            sent["Authorization"] = auth
        if idempotency_key is not None:
            sent["Idempotency-Key"] = f'"{idempotency_key}"'
        return requests.request(
            method,
            f"{self.url}{path}",
            headers={**sent, **(headers or {})},
            timeout=timeout,
            **kwargs,
        )

    def issue(
        self, payment_id: str, *, idempotency_key: str | None = None, **fields: Any
    ) -> requests.Response:
        return self.call(
            "POST",
            "/cash-receipts",
            idempotency_key=idempotency_key,
            json=issue_body(payment_id, **fields),
        )

    def issue_unanswered(
        self,
        payment_id: str,
        *,
        timeout: float,
        idempotency_key: str | None = None,
        expect: type[Exception] | tuple[type[Exception], ...] = requests.ReadTimeout,
    ) -> None:
        """A POST to issue that the client gives up on (its read timeout) or loses (a drop)."""
        with pytest.raises(expect):
            self.call(
                "POST",
                "/cash-receipts",
                idempotency_key=idempotency_key,
                json=issue_body(payment_id),
                timeout=timeout,
            )

    def lookup(self, payment_id: str, **params: str) -> requests.Response:
        return self.call(
            "GET", f"/payments/{quote(payment_id, safe='')}/cash-receipt", params=params
        )

    def cancel(
        self, payment_id: str, *, idempotency_key: str | None = None, **params: str
    ) -> requests.Response:
        return self.call(
            "POST",
            f"/payments/{quote(payment_id, safe='')}/cash-receipt/cancel",
            idempotency_key=idempotency_key,
            params=params,
        )

    def list(self, body: dict[str, Any] | None = None) -> requests.Response:
        """GET /cash-receipts with the body as the `requestBody` query parameter."""
        params = None if body is None else {"requestBody": json.dumps(body)}
        return self.call("GET", "/cash-receipts", params=params)

    def payment(self, payment_id: str, **params: str) -> requests.Response:
        return self.call("GET", f"/payments/{quote(payment_id, safe='')}", params=params)


def issue_body(payment_id: str, **fields: Any) -> dict[str, Any]:
    """A valid IssueCashReceiptBody unless overridden; a field given as None is left out."""
    defaults: dict[str, Any] = {
        "paymentId": payment_id,
        "channelKey": "channel-key-sandbox",
        "type": "PERSONAL",
        "orderName": "현금 주문",
        "currency": "KRW",
        "amount": {"total": 11000},
        "customer": {"identityNumber": "01012345678"},
    }
    return {k: v for k, v in {**defaults, **fields}.items() if v is not None}


def v2_failure(response: requests.Response, status: int, error_type: str) -> dict[str, Any]:
    """Assert V2's error body `{"type", "message"}` with this status and type; return it."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["type"] == error_type, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def v2_success(response: requests.Response) -> dict[str, Any]:
    """Assert a 200 and return its JSON."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
