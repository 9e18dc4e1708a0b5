"""Redis with a password and over TLS, and i'mport over TLS: verified, or refused visibly."""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests
from celery import Celery

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox
from tests.support.tls import TlsFiles, make_certificates
from tests.support.wait import wait_for
from tests.support.worker import TEST_PII_KEY, running_worker, unready_worker, worker_env
from worker.adapters.iamport.client import IamportClient
from worker.celery.producer import enqueue_issue
from worker.core.errors import ConnectionFailed, ProviderUnavailable
from worker.core.schemas import ReceiptRequest
from worker.core.types import JobKey

# REDIS_URL as the broker: its password and TLS, and kombu refusing an unverified server.
pytestmark = [pytest.mark.integration, pytest.mark.redis_broker]

#: Needs percent-encoding in a URL (":", "@", "/"), as generated passwords often do.
PASSWORD = "s3cret:p@ss/word-0123"
PHONE = "01055554321"
TLS_RECEIPT = ReceiptRequest(job=JobKey.payment("imp_tls"), identifier=PHONE)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 that nothing else trusts."""
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_redis(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[RedisServer]:
    """A redis-server that speaks TLS only and asks for a password, as a managed Redis does."""
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), tls=tls_files, password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def auth_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A plain redis-server whose ACL user has a password of this test's."""
    server = RedisServer(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD)
    server.start()
    yield server
    server.stop()


def issue_through(
    redis_url: str, server: RedisServer, sandbox: Sandbox, imp_uid: str
) -> tuple[dict[str, Any], str]:
    """Start a worker on ``redis_url``, enqueue one receipt: its event and the worker's output."""
    producer = Celery("checkout", broker=redis_url)
    producer.conf.pii_encryption_keys = [TEST_PII_KEY]
    try:
        with running_worker(worker_env(redis_url, sandbox.url)) as output:
            task_id = enqueue_issue({"imp_uid": imp_uid, "identifier": PHONE}, app=producer)
            event = ResultStream(server.client()).wait(task_id)
    finally:
        producer.close()
    return event, output.finish()


def assert_password_never_printed(output: str, password: str) -> None:
    """Neither the password nor its URL-encoded form appears; the banner shows it masked."""
    assert password not in output
    assert quote(password, safe="") not in output
    assert ":**@127.0.0.1" in output


def test_worker_issues_over_tls_with_a_private_ca(
    tls_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """rediss://:password@…?ssl_ca_certs=ca.pem: a worker issues; the event lands in that Redis."""
    event, output = issue_through(tls_redis.url, tls_redis, sandbox, imp_uid)
    assert (event["type"], event["data"]["imp_uid"]) == ("cash_receipt.issued", imp_uid)
    assert sandbox.admin.issued_count(imp_uid) == 1
    assert_password_never_printed(output, PASSWORD)
    # And it really was TLS: the server has no plain port to fall back to.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_redis.port, password=PASSWORD, socket_timeout=2).ping()


def test_worker_issues_with_user_and_password(
    auth_redis: RedisServer, sandbox: Sandbox, imp_uid: str
) -> None:
    """redis://user:password@… (the stack's ACL user) works for the broker and the events."""
    assert auth_redis.url.startswith(f"redis://cashreceipt:{quote(PASSWORD, safe='')}@")
    event, output = issue_through(auth_redis.url, auth_redis, sandbox, imp_uid)
    assert (event["type"], event["data"]["imp_uid"]) == ("cash_receipt.issued", imp_uid)
    assert_password_never_printed(output, PASSWORD)


def _refused_visibly(redis_url: str, sandbox: Sandbox, reason: str) -> str:
    """Start a worker that cannot connect; its output once it has said why, never ready."""
    with unready_worker(worker_env(redis_url, sandbox.url)) as (process, output):
        wait_for(
            lambda: reason in output.text or process.poll() is not None,
            timeout=20,
            message=f"the worker to report {reason!r}",
        )
        text = output.text
    assert reason in text, text
    assert "Cannot connect to" in text
    assert " ready." not in text
    return text


def test_wrong_password_is_refused_visibly(auth_redis: RedisServer, sandbox: Sandbox) -> None:
    """A wrong password: an error line at once saying so, with the password masked; no readiness."""
    wrong = "not-the-password-42"
    text = _refused_visibly(
        auth_redis.url_with(password=wrong, ca=None), sandbox, "invalid username-password pair"
    )
    assert wrong not in text


@pytest.mark.parametrize("trusted", ["system CAs only", "another CA"])
def test_untrusted_certificate_is_refused_visibly(
    tls_redis: RedisServer, sandbox: Sandbox, tmp_path: Path, trusted: str
) -> None:
    """A server certificate the worker does not trust stops the connection: verification is on."""
    other_ca = make_certificates(tmp_path / "other").ca if trusted == "another CA" else None
    text = _refused_visibly(
        tls_redis.url_with(password=PASSWORD, ca=other_ca), sandbox, "CERTIFICATE_VERIFY_FAILED"
    )
    assert PASSWORD not in text


# -- i'mport over TLS ----------------------------------------------------------------


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request 503 without a body, and counts the requests it read."""

    requests_seen = 0

    def do_POST(self) -> None:
        type(self).requests_seen += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def https_server(tls_files: TlsFiles) -> Iterator[tuple[str, type[_CountingHandler]]]:
    """An HTTPS server on loopback whose certificate comes from our private CA."""
    handler = type("Handler", (_CountingHandler,), {"requests_seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.cert, tls_files.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()
    thread.join(5)


class _MemoryTokens:
    """A token cache that holds nothing: every call fetches a token."""

    def get(self, key: str) -> str | None:
        return None

    def put(self, key: str, token: str, ttl: float) -> None:
        return None


def _client(url: str, session: requests.Session) -> IamportClient:
    return IamportClient(
        base_url=url,
        imp_key="key",
        imp_secret="secret",
        session=session,
        token_cache=_MemoryTokens(),
        timeout=2,
    )


def test_untrusted_iamport_certificate_is_connection_failed(
    https_server: tuple[str, type[_CountingHandler]],
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An untrusted certificate is ConnectionFailed, nothing sent; trusted, the server answers."""
    url, handler = https_server
    # Empty CA-bundle variables are ignored by requests: they cannot turn verification off.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "")
    monkeypatch.setenv("CURL_CA_BUNDLE", "")
    with requests.Session() as session, pytest.raises(ConnectionFailed, match="not trusted"):
        _client(url, session).issue_receipt(TLS_RECEIPT)
    assert handler.requests_seen == 0

    # The control: trusting our CA (as REQUESTS_CA_BUNDLE would) reaches the server.
    with requests.Session() as session, pytest.raises(ProviderUnavailable):
        session.verify = str(tls_files.ca)
        _client(url, session).issue_receipt(TLS_RECEIPT)
    assert handler.requests_seen == 1
