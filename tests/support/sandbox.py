"""Start the i'mport sandbox as the real console program and drive its admin API.

Tests talk to it over loopback HTTP exactly as the worker does, so nothing here imports the
sandbox package: what is tested is the process a user runs. The same process serves PortOne V2
under `/portone` (`Sandbox.portone_url`); its admin helpers are the `portone_*` ones.
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
DEFAULT_PORTONE_SECRET = "sandbox_portone_secret"
DEFAULT_PORTONE_STORE_ID = "store-sandbox"
DEFAULT_PORTONE_CHANNEL_KEY = "channel-key-sandbox"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
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

    # -- PortOne V2 (/portone) ------------------------------------------------------------------

    def seed_portone_payment(self, payment_id: str, **fields: Any) -> dict[str, Any]:
        """Create or update a V2 payment: `status`, `amount={...}`, `paidAt`, `method`,
        `cashReceipt={...}` (issued at approval), `cashReceiptIssuanceStatus`, `orderName`,
        `currency`. Returns the Payment as GET /payments/{paymentId} answers it."""
        result: dict[str, Any] = self._call("PUT", f"portone/payments/{payment_id}", fields)
        return result

    def refund_portone_payment(
        self,
        payment_id: str,
        *,
        total: int,
        cancelled: int,
        tax_free: int | None = None,
        cancelled_tax_free: int = 0,
    ) -> dict[str, Any]:
        """What PortOne's payment (paid by transfer) shows once the merchant refunded
        ``cancelled`` of its ``total`` (``cancelled_tax_free`` of its ``tax_free`` part):
        PAID with nothing refunded, CANCELLED with all of it."""
        amount = {"total": total, "cancelled": cancelled}
        if tax_free is not None:
            amount |= {"taxFree": tax_free, "cancelledTaxFree": cancelled_tax_free}
        status = "PARTIAL_CANCELLED" if 0 < cancelled < total else "CANCELLED"
        return self.seed_portone_payment(
            payment_id,
            status="PAID" if not cancelled else status,
            amount=amount,
            method="TRANSFER",
        )

    def portone_payment(self, payment_id: str) -> dict[str, Any]:
        """A seeded V2 payment, without the API's auth."""
        result: dict[str, Any] = self._call("GET", f"portone/payments/{payment_id}")
        return result

    def portone_requests(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        """Every V2 API request seen (for one paymentId if given), oldest first: headers with
        the secret hidden, identity numbers masked, the Idempotency-Key as sent, and what the
        sandbox did with it (`idempotency`: new, replayed, outstanding, reused, invalid)."""
        query = {"paymentId": payment_id} if payment_id is not None else {}
        entries: list[dict[str, Any]] = self._call("GET", "portone/requests", **query)["requests"]
        return entries

    def portone_receipts(self) -> dict[str, Any]:
        """`{"receipts": [CashReceipt + "request", ...], "issued_counts": {paymentId: n}}`."""
        result: dict[str, Any] = self._call("GET", "portone/receipts")
        return result

    def portone_issued_count(self, payment_id: str) -> int:
        """How many receipts POST /cash-receipts created for the paymentId (a double issue: 2)."""
        return int(self.portone_receipts()["issued_counts"].get(payment_id, 0))

    def portone_audit(self) -> dict[str, Any]:
        """The audit's `portone` section: blind POSTs and cancels, blind retries, receipts."""
        result: dict[str, Any] = self.audit()["portone"]
        return result

    def script_portone(self, payment_id: str, *steps: dict[str, Any]) -> dict[str, Any]:
        """As `script`, for a V2 paymentId (a V2 cancel is matched by `"endpoint": "cancel"`)."""
        result: dict[str, Any] = self._call(
            "POST", f"portone/faults/{payment_id}", {"script": list(steps)}
        )
        return result

    def portone_reissue(self) -> str:
        """Whether a paymentId whose receipts are all cancelled may be issued again."""
        return str(self._call("GET", "portone/reissue")["reissue"])

    def set_portone_reissue(self, mode: str) -> dict[str, Any]:
        """`allow` or `refuse` a V2 re-issue after a cancel, until the next reset."""
        result: dict[str, Any] = self._call("PUT", "portone/reissue", {"reissue": mode})
        return result

    def set_portone_lookup(self, mode: str) -> dict[str, Any]:
        """Which receipt the V2 lookup shows of several (`issued_first`, `oldest`), until the
        next reset."""
        result: dict[str, Any] = self._call("PUT", "portone/lookup", {"lookup": mode})
        return result

    def portone_idempotency(self) -> dict[str, Any]:
        """`{"retention_seconds": N, "keys": {key: {"state", "status", ...}}}`."""
        result: dict[str, Any] = self._call("GET", "portone/idempotency")
        return result

    def set_idempotency_retention(self, seconds: float) -> dict[str, Any]:
        """How long Idempotency-Keys are kept (on the sandbox clock), stored ones included."""
        result: dict[str, Any] = self._call(
            "PUT", "portone/idempotency", {"retention_seconds": seconds}
        )
        return result


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
        portone_secret: str = DEFAULT_PORTONE_SECRET,
        portone_store_id: str = DEFAULT_PORTONE_STORE_ID,
        portone_channel_key: str = DEFAULT_PORTONE_CHANNEL_KEY,
    ) -> None:
        super().__init__(url)
        self.port = port
        self.imp_key = imp_key
        self.imp_secret = imp_secret
        self.process = process
        self.log_path = log_path
        # PortOne V2: the worker's PORTONE_API_URL, its secret, store and a channel it accepts.
        self.portone_url = f"{url}/portone"
        self.portone_secret = portone_secret
        self.portone_store_id = portone_store_id
        self.portone_channel_key = portone_channel_key

    def portone_headers(self, idempotency_key: str | None = None) -> dict[str, str]:
        """V2's headers: `Authorization: PortOne <secret>`, and the key quoted if given."""
        headers = {"Authorization": f"PortOne {self.portone_secret}"}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_KEY_HEADER] = f'"{idempotency_key}"'
        return headers

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


def _first_flag(args: tuple[str, ...], name: str, default: str) -> str:
    """The first value of a repeatable flag (`--portone-channel-key`), else the default."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return default


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
                portone_secret=_flag(extra_args, "--portone-secret", DEFAULT_PORTONE_SECRET),
                portone_store_id=_flag(extra_args, "--portone-store-id", DEFAULT_PORTONE_STORE_ID),
                portone_channel_key=_first_flag(
                    extra_args, "--portone-channel-key", DEFAULT_PORTONE_CHANNEL_KEY
                ),
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


#: The paths of a V2 paymentId's two POSTs: the issue and the cancel.
PORTONE_ISSUE_PATH = "/cash-receipts"
PORTONE_CANCEL_PATH = "/cash-receipt/cancel"


def portone_posts(
    sandbox: SandboxAdmin, payment_id: str, path: str = PORTONE_ISSUE_PATH
) -> list[dict[str, Any]]:
    """The V2 POSTs for ``payment_id`` seen, oldest first: its issues (``POST
    /cash-receipts``), or with :data:`PORTONE_CANCEL_PATH` its cancels."""
    return [
        entry
        for entry in sandbox.portone_requests(payment_id)
        if entry["method"] == "POST" and entry["path"].endswith(path)
    ]


def portone_payment_reads(sandbox: SandboxAdmin, payment_id: str) -> list[dict[str, Any]]:
    """The reads of V2 payment ``payment_id`` (``GET /payments/{paymentId}``) seen."""
    return [
        entry
        for entry in sandbox.portone_requests(payment_id)
        if entry["method"] == "GET" and entry["path"].endswith(payment_id)
    ]


def portone_live(sandbox: SandboxAdmin, payment_id: str) -> list[dict[str, Any]]:
    """The V2 paymentId's live (ISSUED) receipts, oldest first."""
    return [
        receipt
        for receipt in sandbox.portone_receipts()["receipts"]
        if receipt["paymentId"] == payment_id and receipt["status"] == "ISSUED"
    ]


def wait_posts_processed(sandbox: SandboxAdmin, imp_uid: str, *, timeout: float) -> None:
    """Until every POST for ``imp_uid`` has been acted on: the sandbox fills in its status then."""
    _wait_acted_on(lambda: sandbox.requests(imp_uid), timeout=timeout)


def wait_external_posts_processed(
    sandbox: SandboxAdmin, merchant_uid: str, *, timeout: float
) -> None:
    """As `wait_posts_processed`, for the external receipt of ``merchant_uid``."""
    _wait_acted_on(lambda: sandbox.external_requests(merchant_uid), timeout=timeout)


def wait_portone_posts_processed(sandbox: SandboxAdmin, payment_id: str, *, timeout: float) -> None:
    """Until the sandbox is done with every V2 POST (issue or cancel) for ``payment_id``:
    acted on and answered, or dropped, or given up on by its client."""
    _wait_acted_on(
        lambda: sandbox.portone_requests(payment_id), timeout=timeout, done=lambda e: e["done"]
    )


def _wait_acted_on(
    requests_of: Callable[[], list[dict[str, Any]]],
    *,
    timeout: float,
    done: Callable[[dict[str, Any]], bool] = lambda entry: entry["status"] is not None,
) -> None:
    wait_for(
        lambda: all(done(entry) for entry in requests_of() if entry["method"] == "POST"),
        timeout=timeout,
        message="the late POST to be processed",
    )
