"""Sealing, at the path producers import it from.

The code lives in :mod:`worker.adapters.privacy.sealing`; this module keeps
``worker.sealing.SealingUnavailable`` (and the rest) working and adds nothing.
"""

from __future__ import annotations

from worker.adapters.privacy.sealing import Sealer, SealingUnavailable, UnsealError

__all__ = ["Sealer", "SealingUnavailable", "UnsealError"]
