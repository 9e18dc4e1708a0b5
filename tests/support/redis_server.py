"""A private redis-server per test session: never the shared one on 6379.

Fault tests stop and restart it on the same port and folder, as an operator's
Redis would come back after a crash. Options make it ask for a password
(``requirepass``) or speak TLS only (``--tls-port``, no plain port), with the
URL a worker would be given for it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.tls import TlsFiles
from tests.support.wait import free_port, wait_for


class RedisServer:
    """One redis-server process in its own folder, on a free port."""

    def __init__(
        self,
        folder: Path,
        *,
        appendonly: bool = False,
        password: str | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH; install Debian's redis-server")
        self.folder = folder
        self.port = free_port()
        self.appendonly = appendonly
        self.password = password
        self.tls = tls
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL a worker or client connects with: password and CA included."""
        return self.url_with(password=self.password, ca=self.tls.ca if self.tls else None)

    def url_with(self, *, password: str | None, ca: Path | None) -> str:
        """This server's URL with another password or CA (or none), to show a refusal."""
        auth = f":{quote(password, safe='')}@" if password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"?ssl_ca_certs={quote(str(ca))}" if ca else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0{query}"

    def client(self) -> redis.Redis:
        """A new client of this server."""
        return redis.Redis.from_url(self.url, decode_responses=True)

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers PING."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
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
        probe = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        wait_for(lambda: _pings(probe), timeout=10, message=f"redis-server on {self.port}")

    def _security_arguments(self) -> list[str]:
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

    def stop(self) -> None:
        """Kill the server at once, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
