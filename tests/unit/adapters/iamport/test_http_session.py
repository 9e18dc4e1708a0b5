"""The i'mport session reads requests' environment once, by requests' rules, and verifies TLS."""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from worker.adapters.iamport.client import IamportClient
from worker.adapters.iamport.session import http_session


def test_ca_bundle_and_proxies_are_resolved_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """REQUESTS_CA_BUNDLE wins over CURL_CA_BUNDLE; the proxy is the one requests would use."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    env = {"REQUESTS_CA_BUNDLE": "/etc/ca/a.pem", "CURL_CA_BUNDLE": "/etc/ca/b.pem"}
    session = http_session("https://api.iamport.kr", pool_size=64, env=env)
    assert session.trust_env is False
    assert session.verify == "/etc/ca/a.pem"
    assert session.proxies.get("https") == "http://proxy.internal:3128"
    adapter = session.get_adapter("https://api.iamport.kr/receipts/imp_1")
    assert adapter._pool_maxsize == 64  # type: ignore[attr-defined]
    assert adapter.max_retries.total == 0  # type: ignore[attr-defined]


def test_no_proxy_and_no_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host in NO_PROXY goes direct; without a bundle, the system's CAs are verified."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "api.iamport.kr")
    session = http_session("https://api.iamport.kr", pool_size=8, env={"CURL_CA_BUNDLE": ""})
    assert "https" not in session.proxies
    assert session.verify is True


def test_the_adapter_class_is_mounted_for_both_schemes() -> None:
    """The glue's adapter (a cancelled task sends nothing) serves https and http, no retries."""

    class Marked(HTTPAdapter):
        pass

    session = http_session("https://api.iamport.kr", pool_size=4, env={}, adapter=Marked)
    for url in ("https://api.iamport.kr/receipts", "http://127.0.0.1:8787/receipts"):
        adapter = session.get_adapter(url)
        assert type(adapter) is Marked
        assert adapter.max_retries.total == 0
    assert type(http_session("https://x", pool_size=1, env={}).get_adapter("https://x")) is (
        HTTPAdapter
    )


def test_client_refuses_a_session_that_does_not_verify() -> None:
    """An IamportClient cannot be built on a session with verify=False."""
    session = requests.Session()
    session.verify = False
    with pytest.raises(ValueError, match="verify TLS certificates"):
        IamportClient(
            base_url="https://api.iamport.kr",
            imp_key="k",
            imp_secret="s",
            session=session,
            token_cache=None,  # type: ignore[arg-type]
            timeout=1,
        )
