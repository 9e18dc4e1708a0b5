"""Running a command as a fresh process would at start: only the environment it is given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: What the process keeps of ours: enough to find programs and a locale, no settings.
KEPT = {"PATH", "HOME", "LANG"}


def run_clean(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """``command`` in the checkout, with ``env`` and nothing of ours but :data:`KEPT`."""
    clean = {k: v for k, v in os.environ.items() if k in KEPT}
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def python_clean(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """This interpreter running ``code`` under :func:`run_clean`."""
    return run_clean([sys.executable, "-c", code], **env)
