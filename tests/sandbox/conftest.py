"""One sandbox process for the sandbox suite, reset before every test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.sandbox.client import Api, PortOneApi
from tests.support.sandbox import Sandbox, running_sandbox


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[Sandbox]:
    """Logs at DEBUG so tests can check what reaches the log."""
    with running_sandbox("--log-level", "DEBUG", "--seed", "7") as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(sandbox_process: Sandbox) -> Sandbox:
    """The shared process, back in its startup state (overrides the suite-wide fixture)."""
    sandbox_process.reset()
    return sandbox_process


@pytest.fixture
def api(sandbox: Sandbox) -> Api:
    """A client holding a valid token."""
    return Api(sandbox.url, sandbox.get_token())


@pytest.fixture
def imp_uid() -> str:
    """A payment nobody has touched: the sandbox's default paid vbank payment."""
    return f"imp_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def v2(sandbox: Sandbox) -> PortOneApi:
    """A PortOne V2 client of the sandbox's /portone, with its secret."""
    return PortOneApi(sandbox.portone_url, sandbox.portone_secret)


@pytest.fixture
def payment_id() -> str:
    """A V2 paymentId nobody has touched."""
    return f"pay-{uuid.uuid4().hex[:12]}"
