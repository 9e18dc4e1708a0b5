"""`make audit` (tools/audit.py): a finding fails the build, a service out of reach does not."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tools.audit import BadIgnoreList, Ignored, decide, parse_ignores

ROOT = Path(__file__).resolve().parents[2]
TODAY = datetime.date(2026, 12, 4)
SERVICE = "https://osv.example"
#: What uv audits: every package in uv.lock but the workspace's own (editable) members.
LOCKED = sum(
    "editable" not in package.get("source", {})
    for package in tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))["package"]
)


def _report(*vulnerabilities: dict[str, Any]) -> str:
    return json.dumps(
        {
            "summary": {"audited_packages": 59, "vulnerabilities": len(vulnerabilities)},
            "vulnerabilities": list(vulnerabilities),
            "adverse_statuses": [],
        }
    )


KOMBU_FINDING = {
    "dependency": {"name": "kombu", "version": "5.7.0"},
    "id": "GHSA-aaaa-bbbb-cccc",
    "aliases": ["CVE-2099-0001"],
    "summary": "a made-up advisory",
    "fix_versions": ["5.7.1"],
}


def test_an_entry_until_a_later_date_is_kept() -> None:
    text = 'ignore = [{id = "CVE-2099-0001", reason = "never called", expires = 2026-12-04}]'
    assert parse_ignores(text, TODAY) == [
        Ignored("CVE-2099-0001", "never called", datetime.date(2026, 12, 4))
    ]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ('{id = "X-1", reason = "r", expires = 2026-12-03}', "X-1 expired on 2026-12-03"),
        ('{id = "X-1", reason = "r", expires = "2027-01-01"}', "X-1 needs expires = YYYY-MM-DD"),
        ('{id = "X-1", reason = "r", expires = 2027-01-01T00:00:00Z}', "needs expires"),
        ('{id = "X-1", reason = "r"}', "X-1 needs expires"),
        ('{id = "X-1", reason = " ", expires = 2027-01-01}', "X-1 has no reason"),
        ('{reason = "r", expires = 2027-01-01}', "entry 1 has no id"),
    ],
)
def test_an_expired_or_incomplete_entry_fails(entry: str, says: str) -> None:
    with pytest.raises(BadIgnoreList, match=says):
        parse_ignores(f"ignore = [{entry}]", TODAY)


def test_the_repository_ignore_list_is_valid_today() -> None:
    parse_ignores((ROOT / "tools" / "audit-ignore.toml").read_text(), datetime.date.today())


def test_a_finding_fails_with_one_line_naming_it() -> None:
    verdict = decide(1, _report(KOMBU_FINDING), "", [], SERVICE)
    assert verdict.code == 1
    assert verdict.lines[0] == (
        "audit: kombu 5.7.0: GHSA-aaaa-bbbb-cccc (CVE-2099-0001) a made-up advisory; fixed in 5.7.1"
    )


def test_a_finding_ignored_by_an_alias_passes() -> None:
    ignored = [Ignored("CVE-2099-0001", "never called", TODAY)]
    verdict = decide(1, _report(KOMBU_FINDING), "", ignored, SERVICE)
    assert verdict.code == 0
    assert verdict.lines == (
        "audit: 59 locked packages, no known vulnerability (1 ignored, tools/audit-ignore.toml)",
    )


def test_an_unreachable_service_is_one_line_and_passes() -> None:
    stderr = (
        "error: Request failed after 3 retries\n"
        "  cause: error sending request for url (https://osv.example/v1/querybatch)\n"
        "  cause: failed to lookup address information: Name or service not known\n"
    )
    verdict = decide(2, "", stderr, [], SERVICE)
    assert verdict.code == 0
    assert verdict.lines == (
        "audit: the advisory service https://osv.example could not be reached "
        "(failed to lookup address information: Name or service not known); "
        "the locked set was not audited this time",
    )


def test_any_other_uv_failure_fails() -> None:
    verdict = decide(2, "", "error: The lockfile at `uv.lock` needs to be updated\n", [], SERVICE)
    assert verdict.code == 2


# The script end to end, with the pinned uv reading this repository's uv.lock.


class _OneAdvisory(BaseHTTPRequestHandler):
    """An OSV API that knows one advisory, against the locked kombu."""

    def do_POST(self) -> None:
        queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
        results = [
            {"vulns": [{"id": KOMBU_FINDING["id"], "modified": "2026-01-01T00:00:00Z"}]}
            if query["package"]["name"] == "kombu"
            else {}
            for query in queries
        ]
        self._send({"results": results})

    def do_GET(self) -> None:
        self._send(
            {
                "id": KOMBU_FINDING["id"],
                "aliases": KOMBU_FINDING["aliases"],
                "summary": KOMBU_FINDING["summary"],
                "modified": "2026-01-01T00:00:00Z",
                "affected": [
                    {
                        "package": {"name": "kombu", "ecosystem": "PyPI"},
                        "ranges": [
                            {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "99"}]}
                        ],
                    }
                ],
            }
        )

    def _send(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def advisory_service() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OneAdvisory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _audit(service: str, ignore_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            ROOT / "tools" / "audit.py",
            "--service-url",
            service,
            "--ignore-file",
            ignore_file,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        # No retries: a refused connection is an answer already.
        env={**os.environ, "UV_HTTP_RETRIES": "0"},
    )


def test_the_locked_kombu_with_an_advisory_fails_the_build(
    advisory_service: str, tmp_path: Path
) -> None:
    ignore_file = tmp_path / "ignore.toml"
    ignore_file.write_text("ignore = []\n")
    result = _audit(advisory_service, ignore_file)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("audit: kombu 5.7.0: GHSA-aaaa-bbbb-cccc (CVE-2099-0001)")


@pytest.mark.parametrize(
    ("expires", "code", "says"),
    [
        ("2099-01-01", 0, f"audit: {LOCKED} locked packages, no known vulnerability (1 ignored"),
        ("2020-01-01", 1, "audit: ignore.toml: CVE-2099-0001 expired on 2020-01-01"),
    ],
)
def test_an_ignore_entry_holds_until_it_expires(
    advisory_service: str, tmp_path: Path, expires: str, code: int, says: str
) -> None:
    ignore_file = tmp_path / "ignore.toml"
    ignore_file.write_text(
        f'ignore = [{{id = "CVE-2099-0001", reason = "never called", expires = {expires}}}]\n'
    )
    result = _audit(advisory_service, ignore_file)
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stdout.startswith(says)


def test_an_unreachable_service_does_not_fail_the_build(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        ignore_file = tmp_path / "ignore.toml"
        ignore_file.write_text("ignore = []\n")
        result = _audit(closed, ignore_file)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"audit: the advisory service {closed} could not be reached")
