"""RabbitMQ as the broker of the integration suite: ``BROKER=rabbitmq``.

Each private Redis of a run gets a virtual host of its own (made with
``rabbitmqctl``, removed at the end), so neither runs on a shared RabbitMQ nor
tests with Redis servers of their own see each other's queues; the queue
keeps its contract name, ``cash_receipts``. Redis stays the ledger, the token
cache and the events, as in production. Where no RabbitMQ answers, or it
cannot be given a virtual host, the integration tests are skipped with the
reason rather than run against something else.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from urllib.parse import quote, urlsplit

#: Which broker the integration suite runs on: ``redis`` (default) or ``rabbitmq``.
BROKER = os.environ.get("BROKER", "redis").strip().lower() or "redis"
#: The RabbitMQ server, without a virtual host; CI's runs on this machine.
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
#: Set for the session to the RabbitMQ server the test brokers live on.
BROKER_URL_VARIABLE = "CASHRECEIPT_TEST_BROKER_URL"
CTL_TIMEOUT = 60


class Unavailable(RuntimeError):
    """No RabbitMQ to run against; the message says why."""


def use_rabbitmq() -> bool:
    """Whether this run asked for RabbitMQ as the broker."""
    if BROKER not in {"redis", "rabbitmq"}:
        raise ValueError(f"BROKER must be redis or rabbitmq, got {BROKER!r}")
    return BROKER == "rabbitmq"


def session_broker_url() -> str | None:
    """The RabbitMQ server of this run (no virtual host), or None when the broker is Redis."""
    return os.environ.get(BROKER_URL_VARIABLE) or None


_vhosts: dict[str, RabbitVhost] = {}


def broker_for(redis_url: str) -> str | None:
    """The RabbitMQ broker paired with the Redis at ``redis_url``, or None on Redis.

    Each Redis a test starts gets a virtual host of its own, made on first use,
    as each Redis is a broker of its own when Redis is the broker: a worker of
    one test's Redis never takes another's messages.
    """
    base = session_broker_url()
    if base is None:
        return None
    key = redis_url.split("?", 1)[0]
    if key not in _vhosts:
        vhost = RabbitVhost(base)
        vhost.create()
        _vhosts[key] = vhost
    return _vhosts[key].url


def delete_vhosts() -> None:
    """Remove every virtual host this run made."""
    while _vhosts:
        _vhosts.popitem()[1].delete()


class RabbitVhost:
    """A virtual host of its own on the RabbitMQ server, for one test session."""

    def __init__(self, base_url: str = RABBITMQ_URL) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = f"cashreceipt-test-{uuid.uuid4().hex[:12]}"
        parts = urlsplit(self.base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 5672
        self.user = parts.username or "guest"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{quote(self.name, safe='')}"

    def check(self) -> None:
        """Raise :class:`Unavailable` unless the server answers and rabbitmqctl can manage it."""
        try:
            socket.create_connection((self.host, self.port), timeout=3).close()
        except OSError as error:
            raise Unavailable(
                f"BROKER=rabbitmq, but no RabbitMQ answers at {self.host}:{self.port} ({error})"
            ) from None
        if shutil.which("rabbitmqctl") is None:
            raise Unavailable(
                "BROKER=rabbitmq, but rabbitmqctl is not on PATH: a run needs a virtual host "
                "of its own so that it cannot collide with another run's cash_receipts queue"
            )
        self._ctl("list_vhosts")

    def create(self) -> None:
        """Add the vhost and let the user in."""
        self._ctl("add_vhost", self.name)
        self._ctl("set_permissions", "-p", self.name, self.user, ".*", ".*", ".*")

    def delete(self) -> None:
        self._ctl("delete_vhost", self.name, check=False)

    def _ctl(self, *args: str, check: bool = True) -> None:
        try:
            result = subprocess.run(
                ["rabbitmqctl", "-q", *args],
                capture_output=True,
                text=True,
                timeout=CTL_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"rabbitmqctl {args[0]} did not answer in {CTL_TIMEOUT}s") from None
        if check and result.returncode != 0:
            raise Unavailable(
                f"rabbitmqctl {' '.join(args[:2])} failed: {result.stderr.strip()[:300]}"
            )
