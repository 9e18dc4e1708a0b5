"""A deliberately plain i'mport client for the sandbox tests: one new connection per call.

A fresh connection per call keeps one test's dropped socket from leaking into the next request.
"""

from __future__ import annotations

from typing import Any

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
