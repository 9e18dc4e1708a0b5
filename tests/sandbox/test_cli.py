"""The console program: flags, defaults, log masking, shutdown, and the helper around it."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import requests

from tests.sandbox.client import Api, PortOneApi, failure, get_token, success
from tests.support.sandbox import Sandbox, SandboxError, running_sandbox
from tests.support.wait import free_port, wait_for

SCRIPT = Path(sys.executable).with_name("iamport-sandbox")


def test_help_documents_flags_and_default_credentials() -> None:
    """--help names every flag and the default key and secret."""
    result = subprocess.run(
        [sys.executable, "-m", "iamport_sandbox", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    for flag in [
        "--host",
        "--port",
        "--imp-key",
        "--imp-secret",
        "--token-lifetime",
        "--latency-ms",
        "--latency-jitter-ms",
        "--fault-rate",
        "--seed",
        "--log-level",
        "--external-reissue",
        "--portone-secret",
        "--portone-store-id",
        "--portone-channel-key",
        "--portone-reissue",
        "--idempotency-retention",
    ]:
        assert flag in result.stdout
    assert "sandbox_key" in result.stdout
    assert "sandbox_secret" in result.stdout
    assert "Authorization: PortOne sandbox_portone_secret" in result.stdout


def test_console_script_is_installed() -> None:
    """The distribution ships `iamport-sandbox` next to this interpreter."""
    assert SCRIPT.exists()
    result = subprocess.run(
        [str(SCRIPT), "--help"], capture_output=True, text=True, timeout=30, check=True
    )
    assert "iamport-sandbox" in result.stdout


def test_version() -> None:
    """``--version``: the distribution's version, exit 0."""
    result = subprocess.run(
        [str(SCRIPT), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout == f"iamport-sandbox {version('iamport-sandbox')}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["--fault-rate", "status_503"],
        ["--fault-rate", "teapot=1"],
        ["--fault-rate", "hang=2"],
        ["--token-lifetime", "0"],
        ["--fault-script", 'imp_1=[{"kind":"explode"}]'],
        ["--late-limit-seconds", "-1"],
        ["--external-reissue", "sometimes"],
        ["--portone-reissue", "sometimes"],
        ["--idempotency-retention", "-1"],
        ["--idempotency-retention", "3h"],
        ["--portone-secret", ""],
    ],
)
def test_bad_flags_exit_non_zero(args: list[str]) -> None:
    """A bad flag stops the program with a message instead of serving something else."""
    result = subprocess.run(
        [sys.executable, "-m", "iamport_sandbox", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip()


def test_flags_configure_the_process(imp_uid: str) -> None:
    """Custom credentials, lifetime, rates and scripts from the command line take effect."""
    with running_sandbox(
        "--imp-key",
        "k1",
        "--imp-secret",
        "s1",
        "--token-lifetime",
        "120",
        "--fault-rate",
        "status_503=1.0",
        "--fault-script",
        f'{imp_uid}=[{{"kind":"status","status":502}}]',
        "--seed",
        "3",
    ) as sandbox:
        assert (sandbox.imp_key, sandbox.imp_secret) == ("k1", "s1")
        assert get_token(sandbox.url)["code"] != 0
        token = get_token(sandbox.url, "k1", "s1")["response"]
        assert token["expired_at"] - token["now"] == 120
        api = Api(sandbox.url, token["access_token"])
        failure(api.issue(imp_uid), 502)
        for _ in range(5):
            failure(api.issue(imp_uid), 503)
            failure(api.lookup(imp_uid), 503)
        sandbox.reset()
        assert sandbox.faults()["rates"]["status_503"] == 1.0
        sandbox.clear_faults()
        success(Api(sandbox.url, sandbox.get_token()).issue(imp_uid))


def test_flags_set_what_drawn_faults_carry(imp_uid: str) -> None:
    """--retry-after, --reject-message and --hang-seconds shape the faults the rates draw."""
    with running_sandbox(
        "--fault-rate",
        "rate_limit=1.0",
        "--retry-after",
        "0.25",
        "--reject-message",
        "[PG] 테스트 거절",
        "--hang-seconds",
        "0.2",
    ) as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        limited = api.issue(imp_uid)
        failure(limited, 429)
        assert limited.headers["Retry-After"] == "0.25"
        sandbox.set_rates(rates={"reject": 1.0})
        assert failure(api.issue(imp_uid), 500) == "[PG] 테스트 거절"
        sandbox.set_rates(rates={"hang": 1.0})
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            api.issue(imp_uid)  # the hang ends in a closed connection, long before 3600 s
        assert time.monotonic() - started < 5
        assert sandbox.faults()["hang_seconds"] == 0.2


def test_latency_flag(imp_uid: str) -> None:
    """--latency-ms delays every receipts/payments answer, PortOne V2's as i'mport's (the
    benchmark measures both at one L)."""
    with running_sandbox("--latency-ms", "200") as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        v2 = PortOneApi(sandbox.portone_url, sandbox.portone_secret)
        sandbox.admin.seed_portone_payment(imp_uid)
        for call in (lambda: api.payment(imp_uid), lambda: v2.payment(imp_uid)):
            started = time.monotonic()
            assert call().status_code == 200
            assert time.monotonic() - started >= 0.2


def test_late_limit_flag(imp_uid: str) -> None:
    """--late-limit-seconds caps a latency spike: the request is acted on within the limit."""
    with running_sandbox("--latency-ms", "5000", "--late-limit-seconds", "0.2") as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        started = time.monotonic()
        success(api.issue(imp_uid))
        assert 0.2 <= time.monotonic() - started < 2
        assert sandbox.faults()["late_limit_seconds"] == 0.2


def test_log_masks_identifiers(sandbox: Sandbox, api: Api, imp_uid: str) -> None:
    """At DEBUG every request is logged, with the identifier masked and the secret hidden."""
    success(api.issue(imp_uid, identifier="01077778888", buyer_tel="01066665555"))
    failure(api.issue(f"{imp_uid}_2", identifier="12345678901"), 500)
    log = sandbox.stderr()
    assert f"POST /receipts/{imp_uid} -> 200" in log
    assert "010****8888" in log
    assert "123****8901" in log
    for secret in ["01077778888", "01066665555", "12345678901", sandbox.imp_secret]:
        assert secret not in log


def test_default_log_level_is_quiet_per_request(imp_uid: str) -> None:
    """At INFO nothing is logged per request, which keeps benchmarks fast."""
    with running_sandbox() as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        success(api.issue(imp_uid))
        log = sandbox.stderr()
    assert "iamport-sandbox listening on http://127.0.0.1:" in log
    assert f"/receipts/{imp_uid}" not in log


def test_sigterm_stops_promptly_with_a_hung_request(imp_uid: str) -> None:
    """A hanging request does not hold shutdown: SIGTERM ends the process cleanly, fast."""
    with running_sandbox() as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        sandbox.script(imp_uid, {"kind": "hang"})
        with pytest.raises(requests.ReadTimeout):
            api.call("GET", f"/payments/{imp_uid}", timeout=0.3)
        sandbox.script(imp_uid, {"kind": "hang"})
        held = subprocess.Popen(  # a second client that is still waiting at shutdown
            [
                sys.executable,
                "-c",
                "import requests, sys; requests.get(sys.argv[1], timeout=30)",
                f"{sandbox.url}/payments/{imp_uid}",
            ],
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: len(sandbox.requests(imp_uid)) == 2, timeout=10, message="2nd request")
        assert held.poll() is None
        process = sandbox.process
        started = time.monotonic()
    assert time.monotonic() - started < 3
    assert process.returncode == 0
    held.wait(timeout=10)


def test_fixed_port(sandbox: Sandbox) -> None:
    """--port is honoured, and a port in use fails the helper with the process's stderr."""
    port = free_port()
    with running_sandbox(port=port) as fixed:
        assert fixed.port == port
        assert fixed.url == f"http://127.0.0.1:{port}"
        assert fixed.health()
    with pytest.raises(SandboxError, match="cannot listen"), running_sandbox(port=sandbox.port):
        pass


def test_helper_reports_a_process_that_died() -> None:
    """If the sandbox dies during a test, leaving the block raises with its stderr."""
    with pytest.raises(SandboxError, match="died during the test"), running_sandbox() as sandbox:
        sandbox.process.kill()
        sandbox.process.wait(timeout=10)
