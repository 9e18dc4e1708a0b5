"""Masked forms of personal data, for every place a person may need a hint.

The identifier (a resident registration, business registration, phone or
cash-receipt card number) may reach i'mport and nothing else. Logs, events,
exception texts and Flower show at most ``010****5678``: enough for a support
agent to match a buyer, too little to be the number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# Payload keys whose values are personal data.
PERSONAL_FIELDS = frozenset({"identifier", "buyer_tel", "buyer_email", "buyer_name"})

_DIGIT_RUN = re.compile(r"\d(?:[\d\- ]{5,}\d)")


def mask_identifier(value: object) -> str:
    """Keep the first three and last four digits of a long number; star the rest.

    Shorter values are starred entirely: with fewer than eight digits the kept
    part would be most of the number.
    """
    text = "".join(ch for ch in str(value) if ch.isalnum())
    if len(text) < 10:
        return "*" * len(text)
    return f"{text[:3]}{'*' * (len(text) - 7)}{text[-4:]}"


def mask_text(text: str) -> str:
    """Mask every run of 7+ digits (hyphens and spaces allowed inside) in free text.

    Provider messages, decode-error logs and exception texts may echo a number
    we never chose to show; this is the last line of defence for them.
    """
    return _DIGIT_RUN.sub(lambda match: mask_identifier(match.group(0)), text)


def mask_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a payload that is safe to log or show."""
    masked: dict[str, Any] = {}
    for key, value in payload.items():
        if key in PERSONAL_FIELDS and value is not None:
            masked[key] = mask_identifier(value) if key != "buyer_email" else _mask_email(value)
        else:
            masked[key] = value
    return masked


def _mask_email(value: object) -> str:
    local, _, domain = str(value).partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
