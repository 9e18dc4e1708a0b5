"""Private servers for the benchmark and the tests: a redis-server and the i'mport sandbox.

Both the benchmark (``cashreceipt bench``) and the test suite start their own
``redis-server`` on a free port in a folder of their own, never the shared one
on 6379, and the sandbox as the console program a user runs. The code lives
here, outside ``tests/``, so the two share one copy.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar
from urllib.parse import quote

import redis
import requests

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not hold in time (an AssertionError, so a test reads it as a failure)."""


def wait_for(
    condition: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {message}")
        time.sleep(interval)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on, kept from other askers for a while.

    Bound and closed, a port is free for the next process that asks the kernel
    for any port, until the server it was meant for binds it. Here one
    connection is made to it and closed from the port's side, which leaves the
    port in TIME_WAIT for about a minute: the kernel then gives it to no one
    asking for any port, while a server that sets SO_REUSEADDR (redis-server,
    Flower, the sandbox, the metrics server) can listen on it at once. The
    technique of Yelp's ephemeral-port-reserve.
    """
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        address = listener.getsockname()
        with socket.create_connection(address) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the port's side closes first: it is the one in TIME_WAIT
            client.recv(1)  # the FIN has arrived
        return int(address[1])


class TlsFiles(Protocol):
    """PEM files for a TLS-only server: the CA, and the server's certificate and key."""

    @property
    def ca(self) -> Path: ...
    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...


#: Ports a new redis-server tries, when another process takes each one it is given first.
REDIS_PORT_ATTEMPTS = 5
#: The ACL user the project's processes log in as (docker/redis/users.acl).
APP_USER = "cashreceipt"
#: The tests' own user, for what the project may not do: fault injection, FLUSHDB, CONFIG.
ADMIN_USER = "harness"


class RedisServer:
    """One redis-server process in its own folder, on a free port.

    Fault tests stop and restart it on the same port and folder, as an
    operator's Redis would come back after a crash. Options make it ask for a
    password (``requirepass``) or speak TLS only (``--tls-port``, no plain
    port), with the URL a worker would be given for it.

    A free port is only free when :func:`free_port` looks: another process
    (another test run's Redis, say) may take it before redis-server binds it.
    So a server counts as started only once the one that answers on the port
    is this process, never the other one that took the port.

    Given ``acl`` (the template docker/redis/users.acl), it runs with the stack's
    users instead, rendered by the stack's own script: :attr:`url` logs in as
    the restricted ``cashreceipt`` user (``password``, or a random one), and
    :meth:`client` as an all-powerful ``harness`` user that exists only here.
    So a worker, an ingress or a command that starts using a command the ACL
    does not allow fails its test, and :meth:`denied` names it.
    """

    def __init__(
        self,
        folder: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: TlsFiles | None = None,
        acl: Path | None = None,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH; install Debian's redis-server")
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.acl = acl
        self.password = password or (secrets.token_hex(16) if acl else None)
        self.admin_password = secrets.token_hex(16)
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None
        self._started = False

    @property
    def url(self) -> str:
        """The URL a worker or client connects with: password and CA included."""
        return self.url_with(password=self.password, ca=self.tls.ca if self.tls else None)

    @property
    def admin_url(self) -> str:
        """The URL of a user allowed everything (the server's only one without an ACL)."""
        if self.acl is None:
            return self.url
        return self._url(ADMIN_USER, self.admin_password, self.tls.ca if self.tls else None)

    def url_with(self, *, password: str | None, ca: Path | None) -> str:
        """This server's URL with another password or CA (or none), to show a refusal."""
        return self._url(APP_USER if self.acl else "", password, ca)

    def _url(self, user: str, password: str | None, ca: Path | None) -> str:
        auth = f"{user}:{quote(password, safe='')}@" if password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"?ssl_ca_certs={quote(str(ca))}" if ca else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0{query}"

    def client(self) -> redis.Redis:
        """A new client of this server, allowed every command (for the tests' own checks)."""
        return redis.Redis.from_url(self.admin_url, decode_responses=True)

    def denied(self) -> list[str]:
        """Commands, keys or channels the ACL refused since the start, from ACL LOG.

        Failed logins (a test of a wrong password) are not counted: those are meant.
        Nor is CONFIG GET: the worker's and the ingress's durability check asks it for
        ``appendfsync``, and the ACL refuses it on purpose (README, "Redis's ACL").
        """
        if self.acl is None:
            return []
        entries = self.client().acl_log()
        return [
            f"{entry['username']}: {entry['reason']} {entry['object']}"
            for entry in entries
            if entry["reason"] != "auth"
            and (entry["reason"], entry["object"]) != ("command", "config|get")
        ]

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers, as itself.

        A first start whose port was taken meanwhile moves to another free
        port. A restart keeps its port, which its clients know, and fails if
        the port was taken while it was down.
        """
        restart, self._started = self._started, True
        for _ in range(1 if restart else REDIS_PORT_ATTEMPTS):
            if self._launch():
                return
            if not restart:
                self.port = free_port()
        log = self.folder / "redis.log"
        raise RuntimeError(
            f"redis-server could not listen on 127.0.0.1:{self.port}:\n"
            + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
        )

    def _launch(self) -> bool:
        """Run redis-server on ``self.port``; False when it exits (the port was taken)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        process = self.process = subprocess.Popen(
            [
                "redis-server",
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.folder),
                "--save", "",
                "--appendonly", "yes" if self.appendonly else "no",
                # As production runs it: every acknowledged write survives a crash.
                "--appendfsync", "always",
                "--maxmemory-policy", "noeviction",
                "--logfile", str(self.folder / "redis.log"),
                *self._security_arguments(),
            ],
        )  # fmt: skip
        probe = redis.Redis.from_url(self.admin_url, socket_connect_timeout=0.2)
        try:
            wait_for(
                lambda: process.poll() is not None or _answers_as(probe, process.pid),
                timeout=10,
                message=f"redis-server on {self.port}",
            )
        except WaitTimeout:
            self.stop()
            raise
        finally:
            probe.close()
        return process.poll() is None

    def _security_arguments(self) -> list[str]:
        if self.acl is not None:
            arguments = ["--aclfile", str(self._render_acl(self.acl))]
        else:
            arguments = ["--requirepass", self.password] if self.password else []
        if self.tls is not None:
            # TLS only: the plain port is closed, so nothing can skip the handshake.
            arguments += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert),
                "--tls-key-file", str(self.tls.key),
                "--tls-ca-cert-file", str(self.tls.ca),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        return arguments

    def _render_acl(self, template: Path) -> Path:
        """The template rendered by the stack's own script, plus the tests' admin user."""
        secret = self.folder / "app-password"
        secret.write_text(f"{self.password}\n", encoding="utf-8")
        os.chmod(secret, 0o600)
        rendered = subprocess.run(
            ["sh", str(template.parent / "render-acl.sh"), str(template), str(secret)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        admin = f"user {ADMIN_USER} on >{self.admin_password} ~* &* +@all\n"
        path = self.folder / "users.acl"
        path.write_text(rendered + admin, encoding="utf-8")
        return path

    def stop(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _answers_as(client: redis.Redis, pid: int) -> bool:
    """Whether the server at the client's address answers, and is process ``pid``."""
    try:
        return int(client.info("server")["process_id"]) == pid
    except redis.RedisError:  # not listening yet, or another server that refuses us
        return False


# -- the i'mport sandbox ---------------------------------------------------------

SANDBOX_READY_TIMEOUT = 15.0
_LISTENING = re.compile(r"iamport-sandbox listening on (http://\S+?):(\d+)\s")


class SandboxError(RuntimeError):
    """The sandbox process failed to start or died while in use; carries its stderr."""


def sandbox_command() -> list[str]:
    """This environment's `iamport-sandbox` console script, as docker-compose starts it."""
    return [str(Path(sys.executable).parent / "iamport-sandbox")]


def wait_for_sandbox(process: subprocess.Popen[bytes], log_path: Path) -> tuple[str, int]:
    """The URL and port of a starting sandbox, once its health check answers.

    The port comes from the one line the sandbox always prints to stderr, so a
    sandbox started on port 0 never races another for a port.
    """
    deadline = time.monotonic() + SANDBOX_READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SandboxError(
                f"sandbox exited with {process.returncode} before it was ready:\n"
                + log_path.read_text(errors="replace")
            )
        match = _LISTENING.search(log_path.read_text(errors="replace"))
        if match:
            url, port = match.group(1) + ":" + match.group(2), int(match.group(2))
            try:
                if requests.get(f"{url}/__sandbox__/health", timeout=1).ok:
                    return url, port
            except requests.ConnectionError:
                pass
        time.sleep(0.02)
    raise SandboxError(
        f"sandbox not ready after {SANDBOX_READY_TIMEOUT:g}s:\n"
        + log_path.read_text(errors="replace")
    )


def stop_process(process: subprocess.Popen[bytes] | subprocess.Popen[str], timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
