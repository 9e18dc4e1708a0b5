"""Loading ``celeryconfig``, the one place settings come from."""

from __future__ import annotations

import importlib
from types import ModuleType


def load_celeryconfig() -> ModuleType:
    """Import ``celeryconfig``; a bad setting exits with its message, not a traceback.

    Every entry point (worker, Flower, ``cashreceipt``) goes through here, so a
    wrong value stops each of them at start with the same words.
    """
    try:
        return importlib.import_module("celeryconfig")
    except ValueError as error:
        if type(error).__name__ != "ConfigError":
            raise
        raise SystemExit(f"cashreceipt: configuration error: {error}") from None
