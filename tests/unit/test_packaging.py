"""The wheel the Docker image installs carries everything the services run."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_has_config_tasks_and_console_script(tmp_path: Path) -> None:
    """celeryconfig.py, both packages and the console script are in the wheel; the sandbox is not.

    The image installs this wheel and nothing else (docker/Dockerfile), so a
    module or script missing here is missing in production.
    """
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("cashreceipt-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "celeryconfig.py",
        "worker/celery.py",
        # The ingress container's health check: `python -m worker.health ingress`.
        "worker/health.py",
        "tasks/receipts.py",
    ):
        assert expected in names
    for absent in ("tests/", "iamport_sandbox/", "cashreceipt_bench/"):
        assert not any(name.startswith(absent) for name in names)
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cashreceipt = worker.cli:main" in text
    assert "iamport-sandbox" not in text


def test_the_worker_never_imports_the_sandbox() -> None:
    """Production code must not depend on the simulator: it is a test and demo tool only."""
    probe = (
        "import sys, worker.celery, worker.cli, worker.ingress, tasks.receipts; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'iamport_sandbox'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ALLOW_PLAINTEXT_PII": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"
