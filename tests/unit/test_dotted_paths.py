"""Every ``worker.…`` dotted path the README and the docstrings name still resolves.

Modules moved into layers (issue 13); a reference left behind sends a reader to a
name that is gone (``worker.core.retry.error_for_answer`` outlived its move to the
i'mport adapter). Reads the source tree as text, then imports what it names.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
#: ``worker.`` starting a name of its own: not ``celery.worker.consumer``, not ``logs/worker.log``.
DOTTED = re.compile(r"(?<![\w./-])worker(?:\.[A-Za-z_]\w*)+")


def _texts() -> list[Path]:
    return sorted(
        [
            ROOT / "README.md",
            ROOT / "celeryconfig.py",
            *ROOT.glob("docs/**/*.md"),
            *ROOT.glob("worker/**/*.py"),
            *ROOT.glob("tasks/**/*.py"),
        ]
    )


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module, or an attribute chain under the longest module."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: ModuleType | object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(found, name):
                return False
            found = getattr(found, name)
        return True
    return False


def test_every_dotted_path_resolves() -> None:
    stale = sorted(
        f"{path.relative_to(ROOT)}:{number}: {dotted}"
        for path in _texts()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for dotted in DOTTED.findall(line)
        if not resolves(dotted)
    )
    assert stale == []


def test_the_check_sees_a_stale_path() -> None:
    """The search finds names, and a moved one fails; another package's ``worker`` is skipped."""
    line = "see worker.core.retry.error_for_answer, celery.worker.consumer and logs/worker.log"
    assert DOTTED.findall(line) == ["worker.core.retry.error_for_answer"]
    assert not resolves("worker.core.retry.error_for_answer")
    assert resolves("worker.adapters.iamport.answers.error_for_answer")
    assert resolves("worker.adapters.store.ledger.Ledger.park")
