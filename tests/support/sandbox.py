"""Start the i'mport sandbox as the real console program and drive its admin API.

Tests talk to it over loopback HTTP exactly as the worker does, so nothing here imports the
sandbox package: what is tested is the process a user runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from cashreceipt_bench.servers import SandboxError, sandbox_command, stop_process, wait_for_sandbox

from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KEY = "sandbox_key"
DEFAULT_SECRET = "sandbox_secret"
STOP_TIMEOUT = 5.0
ADMIN_TIMEOUT = 5.0


class SandboxAdmin:
    """Client of the admin API under /__sandbox__/ (plain JSON, no token)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        response = requests.request(
            method,
            f"{self.url}/__sandbox__/{path}",
            json=body,
            params=params or None,
            timeout=ADMIN_TIMEOUT,
        )
        if response.status_code != 200:
            raise AssertionError(
                f"admin {method} {path} answered {response.status_code}: {response.text}"
            )
        return response.json()

    def health(self) -> bool:
        return bool(self._call("GET", "health").get("ok"))

    def reset(self) -> None:
        """Back to the state the process started in (its CLI faults and lifetime included)."""
        self._call("POST", "reset")

    def seed_payment(self, imp_uid: str, **fields: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("PUT", f"payments/{imp_uid}", fields)
        return result

    def requests(self, imp_uid: str | None = None) -> list[dict[str, Any]]:
        """Every API request seen, oldest first, identifiers masked."""
        query = {"imp_uid": imp_uid} if imp_uid is not None else {}
        entries: list[dict[str, Any]] = self._call("GET", "requests", **query)["requests"]
        return entries

    def external_requests(self, merchant_uid: str | None = None) -> list[dict[str, Any]]:
        """The requests on external receipts (for one merchant_uid if given), oldest first."""
        if merchant_uid is not None:
            entries: list[dict[str, Any]] = self._call(
                "GET", "requests", merchant_uid=merchant_uid
            )["requests"]
            return entries
        return [entry for entry in self.requests() if entry["merchant_uid"] is not None]

    def receipts(self) -> dict[str, Any]:
        """`{"receipts": [...], "issued_counts": {imp_uid: n}, "external_receipts": [...],
        "external_issued_counts": {merchant_uid: n}}`, cancelled receipts included."""
        result: dict[str, Any] = self._call("GET", "receipts")
        return result

    def issued_count(self, imp_uid: str) -> int:
        return int(self.receipts()["issued_counts"].get(imp_uid, 0))

    def external_issued_count(self, merchant_uid: str) -> int:
        return int(self.receipts()["external_issued_counts"].get(merchant_uid, 0))

    def audit(self) -> dict[str, Any]:
        """Blind requests and receipts per imp_uid, and whether duplicates are allowed."""
        result: dict[str, Any] = self._call("GET", "audit")
        return result

    def allow_duplicates(self, allow: bool = True) -> dict[str, Any]:
        """Accept (or refuse again) a POST while a receipt is active; until the next reset."""
        result: dict[str, Any] = self._call("PUT", "audit", {"allow_duplicates": allow})
        return result

    def external_reissue(self) -> str:
        """Whether a cancelled external receipt's merchant_uid may be issued again: allow|refuse."""
        return str(self._call("GET", "external/reissue")["external_reissue"])

    def set_external_reissue(self, mode: str) -> dict[str, Any]:
        """`allow` or `refuse` a POST on a merchant_uid whose receipts are all cancelled."""
        result: dict[str, Any] = self._call("PUT", "external/reissue", {"external_reissue": mode})
        return result

    def token(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "token")
        return result

    def set_token_lifetime(self, seconds: int, **policy: int) -> dict[str, Any]:
        """Lifetime of tokens minted from now on; `extend_window_seconds` and
        `extension_seconds` may be given too."""
        result: dict[str, Any] = self._call("PUT", "token", {"lifetime_seconds": seconds, **policy})
        return result

    def revoke_tokens(self) -> None:
        self._call("POST", "tokens/revoke")

    def advance_clock(self, seconds: float) -> float:
        """Move the sandbox's clock forward; returns its new `now`."""
        return float(self._call("POST", "clock", {"advance_seconds": seconds})["now"])

    def script(self, imp_uid: str, *steps: dict[str, Any]) -> dict[str, Any]:
        """Append fault steps; each is consumed by the next matching request on imp_uid."""
        result: dict[str, Any] = self._call("POST", f"faults/{imp_uid}", {"script": list(steps)})
        return result

    def script_external(self, merchant_uid: str, *steps: dict[str, Any]) -> dict[str, Any]:
        """As `script`, for the external receipt of merchant_uid (never the imp_uid alike)."""
        result: dict[str, Any] = self._call(
            "POST", f"external/faults/{merchant_uid}", {"script": list(steps)}
        )
        return result

    def set_rates(self, **body: Any) -> dict[str, Any]:
        """PUT /__sandbox__/faults: `rates={...}`, `latency_ms`, `latency_jitter_ms`, `seed`..."""
        result: dict[str, Any] = self._call("PUT", "faults", body)
        return result

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")


class Sandbox(SandboxAdmin):
    """A running sandbox process. Its admin methods are on it directly and on `.admin`."""

    def __init__(
        self,
        *,
        url: str,
        port: int,
        imp_key: str,
        imp_secret: str,
        process: subprocess.Popen[bytes],
        log_path: Path,
    ) -> None:
        super().__init__(url)
        self.port = port
        self.imp_key = imp_key
        self.imp_secret = imp_secret
        self.process = process
        self.log_path = log_path

    @property
    def admin(self) -> SandboxAdmin:
        return self

    def stderr(self) -> str:
        """Everything the process has logged so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get_token(self) -> str:
        """A valid access token, obtained the way a client would."""
        response = requests.post(
            f"{self.url}/users/getToken",
            json={"imp_key": self.imp_key, "imp_secret": self.imp_secret},
            timeout=ADMIN_TIMEOUT,
        )
        response.raise_for_status()
        return str(response.json()["response"]["access_token"])


def _flag(args: tuple[str, ...], name: str, default: str) -> str:
    """The value the CLI will see for `name`, which argparse takes from its last mention."""
    value = default
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


@contextmanager
def running_sandbox(*extra_args: str, port: int | None = None) -> Iterator[Sandbox]:
    """Run `iamport-sandbox` on loopback until the block ends.

    With no `port`, the sandbox binds port 0 and its startup line says which port it got, so
    parallel runs never race for a port. Raises SandboxError, with the process's stderr, if it
    cannot start or has died by the time the block ends.
    """
    workdir = Path(tempfile.mkdtemp(prefix="iamport-sandbox-"))
    log_path = workdir / "stderr.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [*sandbox_command(), "--host", "127.0.0.1", "--port", str(port or 0), *extra_args]
    try:
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=ROOT
            )
        try:
            url, bound = wait_for_sandbox(process, log_path)
            sandbox = Sandbox(
                url=url,
                port=bound,
                imp_key=_flag(extra_args, "--imp-key", DEFAULT_KEY),
                imp_secret=_flag(extra_args, "--imp-secret", DEFAULT_SECRET),
                process=process,
                log_path=log_path,
            )
            yield sandbox
            if process.poll() is not None:
                raise SandboxError(
                    f"sandbox died during the test (exit {process.returncode}):\n"
                    + log_path.read_text(errors="replace")
                )
        finally:
            stop_process(process, STOP_TIMEOUT)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def wait_posts_processed(sandbox: SandboxAdmin, imp_uid: str, *, timeout: float) -> None:
    """Until every POST for ``imp_uid`` has been acted on: the sandbox fills in its status then."""
    _wait_acted_on(lambda: sandbox.requests(imp_uid), timeout=timeout)


def wait_external_posts_processed(
    sandbox: SandboxAdmin, merchant_uid: str, *, timeout: float
) -> None:
    """As `wait_posts_processed`, for the external receipt of ``merchant_uid``."""
    _wait_acted_on(lambda: sandbox.external_requests(merchant_uid), timeout=timeout)


def _wait_acted_on(requests_of: Callable[[], list[dict[str, Any]]], *, timeout: float) -> None:
    wait_for(
        lambda: all(
            entry["status"] is not None for entry in requests_of() if entry["method"] == "POST"
        ),
        timeout=timeout,
        message="the late POST to be processed",
    )
