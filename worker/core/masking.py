"""Masked forms of personal data, for every place a person may need a hint.

The identifier (a resident registration, business registration, phone or
cash-receipt card number) may reach i'mport and nothing else. Logs, events,
exception texts and Flower show at most ``010****5678``: enough for a support
agent to match a buyer, too little to be the number.

A payload is shown by allow-list (:func:`mask_payload`): only the fields known
to carry no personal data are shown as they are. Whatever else a producer put
in it, a misspelt ``identifer`` or a ``customer_tel`` the schema never heard
of, is shown by name only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from worker.core.contract import PAY_METHODS

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
    """Mask every run of 10+ digits (hyphens and spaces allowed inside) in free text,
    every phone number written with dots or a bracketed area code, and every e-mail address.

    Ten is the shortest identifier (a business number, an old mobile number).
    A buyer's number is also written ``010.1234.5678`` or ``(010) 1234-5678``,
    and a buyer's e-mail reaches a provider's message or a producer's garbage.

    Provider messages, decode-error logs and exception texts may echo a number
    we never chose to show; this is the last line of defence for them. UUIDs
    are left whole: a task id whose last group happens to be all digits is
    still the task id an operator searches the logs for, and no identifier is
    written in that shape.
    """
    parts, start = [], 0
    for match in _UUID.finditer(text):
        parts.append(_masked_free_text(text[start : match.start()]))
        parts.append(match.group(0))
        start = match.end()
    parts.append(_masked_free_text(text[start:]))
    return "".join(parts)


# A phone number with dots (``010.1234.5678``) or a bracketed area code (``(02) 123-4567``,
# ``(010)1234-5678``): three groups, as Korean numbers are written; an IP address has four.
_WRITTEN_PHONE = re.compile(
    r"(?<![0-9A-Za-z_.])(?:0\d{1,2}\.\d{3,4}\.\d{4}|\(0\d{1,2}\)[ \-.]?\d{3,4}[ \-.]?\d{4})"
    r"(?![0-9A-Za-z.]?\d)"
)
# An e-mail address: its local part goes, as a shown ``buyer_email`` loses it.
_EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@(?=[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,})")


def _masked_free_text(text: str) -> str:
    text = _EMAIL.sub(lambda match: f"{match.group(0)[:1]}***@", text)
    text = _WRITTEN_PHONE.sub(lambda match: mask_identifier(match.group(0)), text)
    return _DIGIT_RUN.sub(_mask_unless_date, text)


_DATE = re.compile(r"\d{4}-\d{2}-\d{2}(?: \d{2})?")


def _mask_unless_date(match: re.Match[str]) -> str:
    """Dates and times in log lines look like digit runs; they are not identifiers."""
    text = match.group(0)
    return text if _DATE.fullmatch(text) else mask_identifier(text)


#: Payload fields known to carry no personal data: the ids, the receipt's kind and
#: amounts. Only these are shown as they are (the allow-list).
SHOWN_FIELDS = frozenset(
    {
        "provider",
        "kind",
        "imp_uid",
        "merchant_uid",
        "channel_key",
        "identifier_type",
        "type",
        "product_type",
        "pay_method",
        "tax_free",
        "vat_amount",
        "amount",
        "refund_id",
        "remaining_amount",
        "remaining_tax_free",
        "payment_id",
        "currency",
        "paid_at",
    }
)
#: Personal fields the schemas know: masked, with a hint a support agent can match.
PERSONAL_FIELDS = frozenset({"identifier", "buyer_tel", "buyer_email", "buyer_name"})
#: Ciphertext: shown only as a marker.
SEALED_FIELDS = frozenset({"identifier_sealed", "buyer_sealed"})
#: Fields the schemas know that may still name or reach a person (a sole trader's
#: number and phone, a refund's reason in the merchant's words): shown by name only.
UNSHOWN_FIELDS = frozenset({"company_tel", "company_name", "corp_reg_no", "reason", "order_name"})
#: Every field of an issue's or a refund's payload, the sealed forms included.
PAYLOAD_FIELDS = SHOWN_FIELDS | PERSONAL_FIELDS | SEALED_FIELDS | UNSHOWN_FIELDS
#: What stands for a value that is not shown at all.
REDACTED = "<redacted>"
#: How much of an unknown field's name is shown.
KEY_LIMIT = 40


def mask_payload(payload: Mapping[Any, Any]) -> dict[str, Any]:
    """A copy of a payload that is safe to log or show: masked by allow-list.

    Only :data:`SHOWN_FIELDS` are shown as they are (when they hold a plain
    value); personal fields keep a masked hint, sealed ones a marker. Every
    other field, known to the schema (``company_tel``, ``reason``) or not (a
    misspelt ``identifer``, a ``customer_tel``), keeps its name, so an operator
    sees it was sent, but its value, nested or not, becomes ``<redacted>``.
    """
    masked = unknown_fields_redacted(payload)
    for key in masked.keys() & PAYLOAD_FIELDS:
        masked[key] = _known_value(key, masked[key])
    return masked


def unknown_fields_redacted(
    payload: Mapping[Any, Any], *, known: frozenset[str] = PAYLOAD_FIELDS
) -> dict[str, Any]:
    """A copy of a payload whose fields unknown to the schemas are shown by name only.

    Known fields keep their values: this is the form of a copy that must stay
    replayable (a parked message, its personal fields sealed). A name can carry
    personal data too (``{"01012345678": true}``): an unknown one is shown as
    :func:`shown_key` makes it. ``known`` is what a reader reads: the payload's
    fields, or a message's headers.
    """
    kept: dict[str, Any] = {}
    for key, value in payload.items():
        if key in known:
            kept[key] = value
        else:
            kept.setdefault(shown_key(key), REDACTED)
    return kept


#: What a shown field may hold to be shown: a value outside it (a resident number put in
#: ``identifier_type``) is not known to be anything, so it is not shown either.
_SHOWN_CHOICES: dict[str, frozenset[object]] = {
    "identifier_type": frozenset({"person", "business", "phone", "taxcard"}),
    "type": frozenset({"person", "company"}),
    "product_type": frozenset({"real", "digital"}),
    "provider": frozenset({"iamport", "portone"}),
    "kind": frozenset({"payment", "external"}),
    "pay_method": frozenset(PAY_METHODS),
    "currency": frozenset({"KRW"}),
}
_SHOWN_AMOUNTS = frozenset(
    {"amount", "tax_free", "vat_amount", "remaining_amount", "remaining_tax_free"}
)


def _shows_as_is(key: str, value: object) -> bool:
    """Whether a field the allow-list shows holds a value it may show: one of its
    choices, an integer amount, or an id."""
    if key in _SHOWN_CHOICES:
        return value in _SHOWN_CHOICES[key]
    if key in _SHOWN_AMOUNTS:
        return isinstance(value, int) and not isinstance(value, bool)
    return True


def _known_value(key: str, value: object) -> object:
    if key in SEALED_FIELDS:
        return "<sealed>"
    if not isinstance(value, str | int | float | bool | None):
        return REDACTED
    if value is None:
        return value
    if key in SHOWN_FIELDS:
        return value if _shows_as_is(key, value) else REDACTED
    if key in UNSHOWN_FIELDS:
        return REDACTED
    return _mask_email(value) if key == "buyer_email" else mask_identifier(value)


def shown_key(key: object) -> str:
    """An unknown field's name as it may be shown: cut to :data:`KEY_LIMIT` characters,
    its unprintable ones escaped (a lone surrogate could not even be stored) and its
    digit runs masked as in free text."""
    text = (key if isinstance(key, str) else repr(key))[:KEY_LIMIT]
    printable = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    # Unlike free text, a name hides its digits however they are glued or split
    # (``tel01012345678``, ``tel_010_9876_5432``, ``tel010.1234.5678``): no field
    # name needs seven of them.
    if _digit_count(printable) >= NAME_DIGITS_LIMIT:
        return _ANY_DIGIT.sub("*", printable)
    return mask_text(printable)


#: A name with this many digits, wherever they are, has them all starred.
NAME_DIGITS_LIMIT = 7
#: Digits glued by the separators a name uses (``tel_010_9777_1234``, ``issue_01097771234``).
_GLUED_DIGITS = re.compile(r"\d(?:[_.\-\s]*\d)+")


def mask_strictly(text: str) -> str:
    """:func:`mask_text`, and also every run of digits glued by ``_``, ``.``, ``-`` or
    spaces that holds :data:`NAME_DIGITS_LIMIT` digits or more, starred whole.

    For text nobody chose to show and no id of ours is in: a parked message's reason
    (which repeats a producer's task name) and garbage that was no message at all.
    Free text keeps ``imp_`` and 12 digits whole, for the logs' sake; here a number
    glued to a name is hidden however it is glued.
    """

    def starred(match: re.Match[str]) -> str:
        run = match.group(0)
        return _ANY_DIGIT.sub("*", run) if _digit_count(run) >= NAME_DIGITS_LIMIT else run

    return _GLUED_DIGITS.sub(starred, mask_text(text))


_ANY_DIGIT = re.compile(r"\d")


def _digit_count(text: str) -> int:
    return sum(1 for _ in _ANY_DIGIT.finditer(text))


#: What a protocol header's name-like value (a task name, a task or group id) may look
#: like to be shown: printable ASCII of the kinds these names are made of.
_TOKEN = re.compile(r"[A-Za-z0-9_.:\-]{1,200}")
#: Celery's ``origin`` header: ``gen<pid>@<host>``.
_ORIGIN = re.compile(r"gen\d{1,7}@[A-Za-z0-9.\-]{1,253}")


def shown_token(value: object) -> object:
    """A protocol header's id or name (``id``, ``root_id``, ``task``...) as it may be shown.

    A producer writes these as it likes: a ``shadow`` name or a ``root_id`` can hold a
    phone number as easily as a payload field. Shown as they are only when they have
    the shape of what Celery itself writes: a UUID, a dotted name with fewer than
    :data:`NAME_DIGITS_LIMIT` digits, Celery's ``origin``; ``None`` stays ``None``.
    Anything else is :data:`REDACTED`.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        return REDACTED
    if _UUID.fullmatch(value):
        return value
    if _ORIGIN.fullmatch(value) and _digit_count(value.partition("@")[2]) < NAME_DIGITS_LIMIT:
        return value
    if _TOKEN.fullmatch(value) and _digit_count(value) < NAME_DIGITS_LIMIT:
        return value
    return REDACTED


#: What UTF-8 cannot encode: a surrogate code point. JSON's ``"\\ud800"`` escape
#: decodes to one, and an event or a ledger record holding it could never be written.
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(text: str) -> bool:
    """Whether ``text`` can be encoded as UTF-8 (it holds no surrogate)."""
    return _SURROGATE.search(text) is None


#: Control characters: a newline or an escape code in an id would forge a line of text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` as one line of text: each control character as its ``\\xNN`` escape, so
    an id that carries a newline or a terminal's escape code cannot forge a log line."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group(0)):02x}", shown_text(text))


def shown_text(text: str) -> str:
    """``text`` with each surrogate replaced by U+FFFD, so that it can be written anywhere."""
    return _SURROGATE.sub("\ufffd", text)


def masked_args_repr(args: object) -> str:
    """What Flower, task events and logs show for a task's arguments.

    Never empty: Celery falls back to the raw arguments when argsrepr is "".
    """
    if not isinstance(args, list | tuple):
        return REDACTED
    shown = [mask_payload(arg) if isinstance(arg, Mapping) else REDACTED for arg in args]
    return repr(shown)


def _mask_email(value: object) -> str:
    local, _, domain = str(value).partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"
