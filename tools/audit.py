"""``make audit``: the locked set (uv.lock) against the known vulnerabilities.

uv's own audit (``uv audit``, the pinned uv of the uv dependency group) reads
uv.lock and asks an OSV service (https://api.osv.dev by default) about every
package it would install, the extras and the dev group included. This script
decides what that means for the build:

- a finding fails it, unless tools/audit-ignore.toml lists its id (or an alias)
  with a reason and an expiry date that has not passed;
- an expired or malformed ignore entry fails it too, so an exception is looked at
  again rather than kept for ever;
- an advisory service that cannot be reached is said on one line and passes:
  the lock did not change because of it, and the next run audits again.

Exit codes: 0 clean (or service unreachable), 1 a finding or a bad ignore list,
2 uv failed for another reason (the lock out of date, say).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILE = ROOT / "tools" / "audit-ignore.toml"
DEFAULT_SERVICE = "https://api.osv.dev"
#: What uv prints when it gets no answer from the service (DNS, refused, timeout).
UNREACHABLE_MARKS = ("error sending request", "Request failed after")


@dataclass(frozen=True)
class Ignored:
    """A finding that does not apply here, until a date by which someone looks again."""

    id: str
    reason: str
    expires: datetime.date


@dataclass(frozen=True)
class Finding:
    id: str
    aliases: tuple[str, ...]
    package: str
    version: str
    summary: str
    fixed_in: tuple[str, ...]

    def line(self) -> str:
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        fixed = f"; fixed in {', '.join(self.fixed_in)}" if self.fixed_in else "; no fix yet"
        return f"{self.package} {self.version}: {self.id}{aliases} {self.summary}{fixed}"


@dataclass(frozen=True)
class Verdict:
    code: int
    lines: tuple[str, ...]


class BadIgnoreList(ValueError):
    """tools/audit-ignore.toml has an entry without an id, a reason or a valid date."""


def parse_ignores(text: str, today: datetime.date) -> list[Ignored]:
    """The entries of an ignore list; an expired or incomplete one raises BadIgnoreList."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BadIgnoreList(f"not TOML: {error}") from None
    entries = document.get("ignore", [])
    if not isinstance(entries, list):
        raise BadIgnoreList("'ignore' must be an array of tables ([[ignore]])")
    result = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise BadIgnoreList(f"entry {number} is not a table")
        ident, reason, expires = entry.get("id"), entry.get("reason"), entry.get("expires")
        name = ident if isinstance(ident, str) and ident else f"entry {number}"
        if not isinstance(ident, str) or not ident:
            raise BadIgnoreList(f"{name} has no id")
        if not isinstance(reason, str) or not reason.strip():
            raise BadIgnoreList(f"{name} has no reason")
        # A TOML date (expires = 2027-03-31), not a string or a date-time: no time zone to
        # argue about, and a typo is a parse error rather than a date in another century.
        if type(expires) is not datetime.date:
            raise BadIgnoreList(f"{name} needs expires = YYYY-MM-DD (a TOML date)")
        if expires < today:
            raise BadIgnoreList(f"{name} expired on {expires.isoformat()}: look at it again")
        result.append(Ignored(ident, reason.strip(), expires))
    return result


def findings_of(report: Mapping[str, Any]) -> list[Finding]:
    """The vulnerabilities and adverse statuses (yanked, quarantined...) of uv's JSON report."""
    found = [
        Finding(
            id=str(item["id"]),
            aliases=tuple(str(alias) for alias in item.get("aliases") or ()),
            package=str(item["dependency"]["name"]),
            version=str(item["dependency"]["version"]),
            summary=str(item.get("summary") or "").strip(),
            fixed_in=tuple(str(v) for v in item.get("fix_versions") or ()),
        )
        for item in report.get("vulnerabilities", [])
    ]
    for item in report.get("adverse_statuses", []):
        dependency = item.get("dependency", {})
        package = str(dependency.get("name", "?"))
        found.append(
            Finding(
                id=f"status:{package}",
                aliases=(),
                package=package,
                version=str(dependency.get("version", "?")),
                summary=json.dumps(item, sort_keys=True),
                fixed_in=(),
            )
        )
    return found


def decide(
    returncode: int, stdout: str, stderr: str, ignores: Sequence[Ignored], service: str
) -> Verdict:
    """What one ``uv audit --output-format json`` run means for the build."""
    try:
        report = json.loads(stdout)
    except ValueError:
        report = None
    if not isinstance(report, dict):
        if returncode != 0 and any(mark in stderr for mark in UNREACHABLE_MARKS):
            reason = _last_cause(stderr)
            return Verdict(
                0,
                (
                    f"audit: the advisory service {service} could not be reached ({reason}); "
                    "the locked set was not audited this time",
                ),
            )
        first = stderr.strip().splitlines()[0] if stderr.strip() else f"exit {returncode}"
        return Verdict(2, (f"audit: uv audit failed: {first}",))
    ignored_ids = {entry.id for entry in ignores}
    findings = findings_of(report)
    live = [f for f in findings if not ignored_ids & {f.id, *f.aliases}]
    audited = report.get("summary", {}).get("audited_packages", "?")
    skipped = len(findings) - len(live)
    note = f" ({skipped} ignored, tools/audit-ignore.toml)" if skipped else ""
    if live:
        return Verdict(
            1,
            (
                *(f"audit: {finding.line()}" for finding in live),
                f"audit: {len(live)} finding(s) in {audited} locked packages{note}: upgrade "
                "(make lock) or, if it does not apply, add it to tools/audit-ignore.toml",
            ),
        )
    return Verdict(0, (f"audit: {audited} locked packages, no known vulnerability{note}",))


def _last_cause(stderr: str) -> str:
    causes = [
        line.split("cause:", 1)[1].strip() for line in stderr.splitlines() if "cause:" in line
    ]
    return causes[-1] if causes else stderr.strip().splitlines()[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/audit.py", description=__doc__)
    parser.add_argument("--service-url", default=DEFAULT_SERVICE, help="an OSV API")
    parser.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
    parser.add_argument("--project", type=Path, default=ROOT, help="where uv.lock is")
    args = parser.parse_args(argv)

    try:
        ignores = parse_ignores(args.ignore_file.read_text(encoding="utf-8"), datetime.date.today())
    except BadIgnoreList as error:
        print(f"audit: {args.ignore_file.name}: {error}")
        return 1
    uv = Path(sys.executable).parent / "uv"
    command = [
        str(uv),
        "audit",
        "--frozen",
        "--project",
        str(args.project),
        "--preview-features",
        "audit-command,json-output",
        "--output-format",
        "json",
        "--service-url",
        args.service_url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    verdict = decide(result.returncode, result.stdout, result.stderr, ignores, args.service_url)
    print("\n".join(verdict.lines))
    return verdict.code


if __name__ == "__main__":
    sys.exit(main())
