"""Input no producer should send: text UTF-8 cannot encode, JSON nested past any parser."""

from __future__ import annotations

import json
from typing import Any

from tests.support.sandbox import Sandbox

#: A lone surrogate: what JSON's ``"\ud800"`` escape decodes to, and UTF-8 cannot encode.
LONE = "\ud800"
#: Far deeper than Python's recursion limit (and than kombu's or json's).
DEEP = 100_000


def deep_json(depth: int = DEEP) -> bytes:
    """``[[[...]]]``: valid JSON that no recursive parser can read."""
    return b"[" * depth + b"]" * depth


def sent_for(sandbox: Sandbox, imp_uid: str) -> list[dict[str, Any]]:
    """Every request the sandbox saw that names ``imp_uid``, whatever follows it."""
    return [entry for entry in sandbox.admin.requests() if imp_uid in json.dumps(entry)]
