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

# Digits with single hyphens or spaces between them, not glued to letters. An underscore
# before them is part of a name: i'mport's own ids are ``imp_`` and 12 digits, and an operator
# searches the logs for them whole; nobody writes a buyer's number glued to a name.
_DIGIT_RUN = re.compile(r"(?<![0-9A-Za-z_])\d(?:[\- ]?\d){9,}(?![0-9A-Za-z])")


def mask_identifier(value: object) -> str:
    """Keep the first three and last four digits of a long number; star the rest.

    Shorter values are starred entirely: with fewer than eight digits the kept
    part would be most of the number.
    """
    text = "".join(ch for ch in str(value) if ch.isalnum())
    if len(text) < 10:
        return "*" * len(text)
    return f"{text[:3]}{'*' * (len(text) - 7)}{text[-4:]}"


# A UUID (a task id): its hex groups can be all digits, one task id in a hundred.
_UUID = re.compile(
    r"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(?![0-9A-Za-z])"
)


def mask_text(text: str) -> str:
    """Mask every run of 10+ digits (hyphens and spaces allowed inside) in free text.

    Ten is the shortest identifier (a business number, an old mobile number).

    Provider messages, decode-error logs and exception texts may echo a number
    we never chose to show; this is the last line of defence for them. UUIDs
    are left whole: a task id whose last group happens to be all digits is
    still the task id an operator searches the logs for, and no identifier is
    written in that shape.
    """
    parts, start = [], 0
    for match in _UUID.finditer(text):
        parts.append(_DIGIT_RUN.sub(_mask_unless_date, text[start : match.start()]))
        parts.append(match.group(0))
        start = match.end()
    parts.append(_DIGIT_RUN.sub(_mask_unless_date, text[start:]))
    return "".join(parts)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?: \d{2})?")


def _mask_unless_date(match: re.Match[str]) -> str:
    """Dates and times in log lines look like digit runs; they are not identifiers."""
    text = match.group(0)
    return text if _DATE.fullmatch(text) else mask_identifier(text)


def mask_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a payload that is safe to log or show."""
    masked: dict[str, Any] = {}
    for key, value in payload.items():
        if key in {"identifier_sealed", "buyer_sealed"}:
            masked[key] = "<sealed>"
        elif not isinstance(key, str) or not isinstance(value, str | int | float | bool | None):
            masked[str(key)[:40]] = "<redacted>"
        elif key in PERSONAL_FIELDS and value is not None:
            masked[key] = mask_identifier(value) if key != "buyer_email" else _mask_email(value)
        else:
            masked[key] = value
    return masked


def masked_args_repr(args: object) -> str:
    """What Flower, task events and logs show for a task's arguments.

    Never empty: Celery falls back to the raw arguments when argsrepr is "".
    """
    if not isinstance(args, list | tuple):
        return "<redacted>"
    shown = [mask_payload(arg) if isinstance(arg, Mapping) else "<redacted>" for arg in args]
    return repr(shown)


def _mask_email(value: object) -> str:
    local, _, domain = str(value).partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
