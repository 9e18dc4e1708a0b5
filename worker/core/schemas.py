"""The task payloads, validated with marshmallow: an issue's and a refund's.

Payload errors are written for the engineer who wired the checkout: plain words,
keyed by field, and never echoing the value (the identifier is personal data,
and marshmallow's ``ValidationError.data`` is never shown anywhere).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    Schema,
    ValidationError,
    fields,
    pre_load,
    validate,
    validates_schema,
)

from worker.core.contract import EXTERNAL, IAMPORT, KINDS, PAY_METHODS, PAYMENT, PORTONE
from worker.core.masking import (
    PAYLOAD_FIELDS,
    PERSONAL_FIELDS,
    SEALED_FIELDS,
    encodable,
    shown_text,
)
from worker.core.ports import Sealing, Unsealer, UnsealError
from worker.core.types import JobKey, ReceiptOrder

IDENTIFIER_TYPES = ("person", "business", "phone", "taxcard")
BUYER_FIELDS = ("buyer_name", "buyer_email", "buyer_tel")
RECEIPT_TYPES = ("person", "company")
#: The failure reason of a payload whose sealed fields no configured key opens.
PAYLOAD_UNREADABLE = "payload_unreadable"

_SEPARATORS = re.compile(r"[\s\-]")
# Lengths from research/iamport-api.md §9: phone 10-11 (01x...), business 10,
# resident registration 13, cash-receipt card 13-19.
_PHONE = re.compile(r"01[016789]\d{7,8}")


class InvalidPayload(ValueError):
    """The task payload cannot be issued as it is; ``errors`` maps field to reasons."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        self.errors = {key: list(messages) for key, messages in errors.items()}
        summary = "; ".join(f"{key}: {' '.join(msgs)}" for key, msgs in sorted(self.errors.items()))
        super().__init__(f"invalid payload: {summary}")

    @property
    def reason(self) -> str:
        """The reason its failure event gives."""
        return "invalid_payload"


class PayloadUnreadable(InvalidPayload):
    """A sealed field no configured key opens: sealed with a key since dropped, or corrupt.

    Not the producer's mistake to correct but the operator's: the key that sealed
    it is back (``PII_ENCRYPTION_KEYS``), then the job is replayed. Its failure
    event says ``payload_unreadable``.
    """

    @property
    def reason(self) -> str:
        return PAYLOAD_UNREADABLE


class Identifier(fields.String):
    """Digits, with hyphens and spaces tolerated and stripped."""

    default_error_messages = {  # noqa: RUF012 (marshmallow's own extension point)
        "invalid": "Must be a string of digits.",
        "digits": "Must contain only digits, hyphens and spaces.",
        "length": "Must be 10 to 19 digits long.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        # A JSON number is refused: it has already lost a phone number's leading 0.
        if not isinstance(value, str):
            raise self.make_error("invalid")
        digits = _SEPARATORS.sub("", str(value))
        if not digits.isdigit() or not digits.isascii():
            raise self.make_error("digits")
        if not 10 <= len(digits) <= 19:
            raise self.make_error("length")
        return digits


def _phone_problem(number: str) -> str | None:
    if _PHONE.fullmatch(number):
        return None
    return "A phone identifier must be a Korean mobile number: 01X and 10 or 11 digits."


def _business_problem(number: str) -> str | None:
    if len(number) != 10:
        return "A business registration number has 10 digits."
    if not business_number_checks(number):
        return "A business registration number's check digit does not match."
    return None


def _person_problem(number: str) -> str | None:
    if len(number) != 13:
        return "A resident registration number has 13 digits."
    if not _plausible_birth_date(number):
        return "A resident registration number must start with a valid birth date."
    return None


def _taxcard_problem(number: str) -> str | None:
    if 13 <= len(number) <= 19:
        return None
    return "A cash-receipt card number has 13 to 19 digits."


_TYPE_PROBLEMS = {
    "phone": _phone_problem,
    "business": _business_problem,
    "person": _person_problem,
    "taxcard": _taxcard_problem,
}


def identifier_problem(identifier: str, identifier_type: str | None) -> str | None:
    """Why an identifier cannot be of its declared type, or None when it can.

    Without a type nothing is inferred from the length (13 digits may be a
    resident number or a card): only what holds for every type (10-19 digits)
    was checked, and i'mport decides the rest. Resident numbers are checked for
    length and birth date only: those assigned since October 2020 carry no
    check digit.
    """
    problem = _TYPE_PROBLEMS.get(identifier_type or "")
    return problem(identifier) if problem else None


def business_number_checks(number: str) -> bool:
    """The National Tax Service check digit of a 10-digit business registration number."""
    weights = (1, 3, 7, 1, 3, 7, 1, 3, 5)
    total = sum(int(digit) * weight for digit, weight in zip(number[:9], weights, strict=True))
    total += int(number[8]) * 5 // 10
    return (10 - total % 10) % 10 == int(number[9])


def _plausible_birth_date(rrn: str) -> bool:
    century = {"9": 1800, "0": 1800, "1": 1900, "2": 1900, "5": 1900, "6": 1900}.get(rrn[6], 2000)
    try:
        date(century + int(rrn[0:2]), int(rrn[2:4]), int(rrn[4:6]))
    except ValueError:
        return False
    return True


_NOT_UNICODE = "Must be Unicode text: a lone surrogate (such as \\ud800) cannot be encoded."


class _UnicodeText:
    """Mixin for a string field: a value UTF-8 cannot encode is invalid (never echoed)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        text = super()._deserialize(value, attr, data, **kwargs)  # type: ignore[misc]
        if isinstance(text, str) and not encodable(text):
            raise ValidationError(_NOT_UNICODE)
        return text


class Text(_UnicodeText, fields.String):
    """A string field whose value can be encoded as UTF-8."""


class EmailText(_UnicodeText, fields.Email):
    """An e-mail address that can be encoded as UTF-8."""


#: Path segments every HTTP client and server reads as "here" and "up": a URL ending in
#: ``/..`` reaches its parent, and percent-encoding them is undone by servers that normalise.
_DOT_SEGMENTS = frozenset({".", ".."})


def _not_a_dot_segment(value: str) -> None:
    if value in _DOT_SEGMENTS:
        raise ValidationError(
            f"Cannot be {value!r}: in the provider's URL it would name another path, "
            "not this payment."
        )


def provider_id(*, required: bool = True) -> Text:
    """An id the provider's URL carries as a path segment, as every provider's does."""
    optional: dict[str, Any] = {} if required else {"load_default": None, "allow_none": True}
    return Text(
        required=required,
        **optional,
        validate=[validate.Length(min=1, max=100), _not_a_dot_segment],
    )


def _optional_text(max_length: int) -> fields.String:
    return Text(load_default=None, allow_none=True, validate=validate.Length(max=max_length))


def _served(default: str, served: tuple[str, ...], what: str) -> Text:
    """``provider`` or ``kind``: named in the payload contract, with the default that gives
    every payload written before them its meaning. Only what this release serves passes."""
    choices = ", ".join(repr(choice) for choice in served)
    return Text(
        load_default=default,
        validate=validate.OneOf(served, error=f"Must be {choices}: {what}."),
    )


def _provider() -> Text:
    return _served(
        IAMPORT, SERVED_PROVIDERS, "i'mport (PortOne V1) or PortOne V2, which PROVIDERS names"
    )


def _kind() -> Text:
    return _served(PAYMENT, SERVED_KINDS, "a payment made through i'mport, or cash taken outside")


def _amount(*, minimum: int = 0, required: bool = False) -> fields.Integer:
    """An amount in won, capped where JSON numbers stay exact: a bigger one could not be sent on."""
    optional: dict[str, Any] = {} if required else {"load_default": None, "allow_none": True}
    return fields.Integer(
        required=required,
        **optional,
        strict=True,
        # Said as 2^53 - 1: a 16-digit number in an error is what the masks hide.
        validate=validate.Range(
            min=minimum, max=2**53 - 1, error=f"Must be from {minimum} to 2^53 - 1."
        ),
    )


#: The payload's ``provider`` and ``kind`` this release serves.
SERVED_PROVIDERS = (IAMPORT, PORTONE)
SERVED_KINDS = (PAYMENT, EXTERNAL)
#: V1's ``product_type``: what was sold (KSNET requires it).
PRODUCT_TYPES = ("real", "digital")
#: Fields that name the job, not the receipt: never sent to the provider as receipt fields.
_JOB_FIELDS = frozenset({"provider", "kind", "imp_uid", "merchant_uid", "payment_id"})


class _ReceiptSchema(Schema):
    """The receipt's own fields, one name each, whatever the kind of job."""

    class Meta:
        unknown = EXCLUDE

    provider = _provider()
    kind = _kind()
    identifier = Identifier(required=True)
    identifier_type = Text(
        load_default=None, allow_none=True, validate=validate.OneOf(IDENTIFIER_TYPES)
    )
    type = Text(load_default="person", validate=validate.OneOf(RECEIPT_TYPES))
    product_type = Text(load_default=None, allow_none=True, validate=validate.OneOf(PRODUCT_TYPES))
    corp_reg_no = _optional_text(40)
    buyer_name = _optional_text(100)
    buyer_email = EmailText(load_default=None, allow_none=True)
    buyer_tel = _optional_text(40)
    tax_free = _amount()
    vat_amount = _amount()

    @validates_schema
    def _identifier_matches_type(self, data: dict[str, Any], **_: Any) -> None:
        identifier = data.get("identifier")
        if identifier is None:
            return
        problem = identifier_problem(identifier, data.get("identifier_type"))
        if problem:
            raise ValidationError(problem, field_name="identifier")


class PaymentConfirmedSchema(_ReceiptSchema):
    """The ``issue_cash_receipt`` payload. Unknown fields are dropped, never sent on."""

    imp_uid = provider_id()
    merchant_uid = _optional_text(100)
    company_tel = _optional_text(40)
    company_name = _optional_text(100)


class _OrderSchema(_ReceiptSchema):
    """A receipt whose payload carries the order: no payment of the provider's tells it.

    ``channel_key``, ``order_name`` (V1's ``name``, V2's ``orderName``: one name across
    kinds and providers), ``amount`` (the total) and ``identifier``.
    """

    channel_key = Text(required=True, validate=validate.Length(min=1, max=100))
    order_name = Text(required=True, validate=validate.Length(min=1, max=200))
    amount = _amount(minimum=1, required=True)
    pay_method = Text(load_default=None, allow_none=True, validate=validate.OneOf(PAY_METHODS))

    @validates_schema
    def _parts_within_the_total(self, data: dict[str, Any], **_: Any) -> None:
        total = data.get("amount")
        for part in ("tax_free", "vat_amount"):
            value = data.get(part)
            if isinstance(total, int) and value is not None and value > total:
                raise ValidationError("Must not exceed amount.", field_name=part)


class ExternalReceiptSchema(_OrderSchema):
    """The ``issue_cash_receipt`` payload of ``kind: external``: cash taken outside i'mport.

    No payment exists to read the amount or the order from, so the payload carries
    them, as V1's external receipt requires. Unknown fields are dropped, never sent on.
    """

    merchant_uid = provider_id()


class PaidAt(fields.Field):  # type: ignore[type-arg]
    """When the cash was paid: RFC 3339 with a UTC offset, or a UNIX time in seconds.

    Normalised once, here, to RFC 3339 in UTC: the payload is kept and sent as it is
    on every retry, so the request body stays the same under one idempotency key.
    Never "now": a receipt's date decides the five-day issuance rule. A time before
    2000 or after 2099 is a mistake (0, a milliseconds count, a typo), not a sale's:
    refused rather than sent to the tax service.
    """

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool):
            raise ValidationError(_PAID_AT)
        if isinstance(value, int):
            try:
                moment = datetime.fromtimestamp(value, tz=UTC)
            except (OverflowError, OSError, ValueError):
                raise ValidationError(_PAID_AT) from None
        elif isinstance(value, str) and len(value) <= 40:
            try:
                # RFC 3339 allows a lowercase t and z.
                moment = datetime.fromisoformat(value.upper())
            except ValueError:
                raise ValidationError(_PAID_AT) from None
            if moment.tzinfo is None:
                raise ValidationError("Must carry a UTC offset (Z or +09:00).")
        else:
            raise ValidationError(_PAID_AT)
        if not _EARLIEST_PAID_AT <= moment < _LATEST_PAID_AT:
            raise ValidationError("Must be a time from 2000 to 2099.")
        return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


_PAID_AT = "Must be an RFC 3339 date-time or a UNIX time in seconds."
_EARLIEST_PAID_AT = datetime(2000, 1, 1, tzinfo=UTC)
#: Fixed, not "now": the core reads no clock (a payload's validity must not change with
#: the hour it is read at, by the producer or a worker).
_LATEST_PAID_AT = datetime(2100, 1, 1, tzinfo=UTC)
#: The one currency a Korean cash receipt is issued in.
CURRENCIES = ("KRW",)


class PortOneReceiptSchema(_OrderSchema):
    """The ``issue_cash_receipt`` payload of ``provider: portone`` (PortOne V2), either kind.

    V2 names the receipt by a ``payment_id``: PortOne's payment's, or for cash taken
    outside PortOne one the merchant chooses. The store is configuration
    (``PORTONE_STORE_ID``), never the payload's.
    """

    provider = Text(required=True, validate=validate.Equal(PORTONE))
    payment_id = provider_id()

    @pre_load
    def _currency_in_capitals(self, data: Any, **_: Any) -> Any:
        """``krw`` is KRW: ISO 4217 codes are compared in capitals."""
        if isinstance(data, dict) and isinstance(data.get("currency"), str):
            return {**data, "currency": data["currency"].upper()}
        return data

    currency = Text(
        load_default="KRW",
        validate=validate.OneOf(CURRENCIES, error="Must be 'KRW': cash receipts are in won."),
    )
    paid_at = PaidAt(load_default=None, allow_none=True)


@dataclass(frozen=True)
class ReceiptRequest(ReceiptOrder):
    """A validated payload: the receipt to issue, as the provider port takes it."""

    #: The identifier's token as it came, when the newest key sealed exactly this value.
    sealed_identifier: str | None = field(default=None, repr=False, compare=False)

    def to_message(self, sealer: Sealing) -> dict[str, Any]:
        """The payload again, normalised, with its personal data sealed (when a key exists).

        This is what our producers enqueue, what a retry re-publishes and what
        the ledger stores: the identifier becomes ``identifier_sealed``, and the
        buyer's name, e-mail and phone travel together in ``buyer_sealed``.
        Nothing personal is held in clear unless plaintext was allowed.
        """
        named = naming_payload(self.job)
        if self.job.provider == IAMPORT:
            named.setdefault("merchant_uid", self.merchant_uid)
        message = {**named, **self.receipt_fields()}
        if sealer.enabled:
            identifier = message.pop("identifier")
            message["identifier_sealed"] = self.sealed_identifier or sealer.seal(identifier)
            buyer = {key: message.pop(key) for key in BUYER_FIELDS if key in message}
            if buyer:
                message["buyer_sealed"] = sealer.seal(json.dumps(buyer, ensure_ascii=False))
        return message


_PAYLOAD_SCHEMA = PaymentConfirmedSchema()
_EXTERNAL_SCHEMA = ExternalReceiptSchema()
_PORTONE_SCHEMA = PortOneReceiptSchema()


def _schema_of(fields: Mapping[str, Any]) -> Schema:
    """The schema of a payload's provider and kind, as given; never guessed from the
    other fields. A provider no schema knows meets the V1 payment schema, whose
    ``provider`` field refuses it by name."""
    if fields.get("provider") == PORTONE:
        return _PORTONE_SCHEMA
    return _EXTERNAL_SCHEMA if fields.get("kind") == EXTERNAL else _PAYLOAD_SCHEMA


def load_payload(raw: object, sealer: Unsealer | None = None) -> ReceiptRequest:
    """Validate a payment-confirmed payload or raise :class:`InvalidPayload`.

    The identifier comes in clear as ``identifier`` or sealed as
    ``identifier_sealed``; a sealed one is opened with ``sealer`` and then
    validated like a clear one.
    """
    if not isinstance(raw, Mapping):
        raise InvalidPayload({"_payload": ["Must be a JSON object."]})
    fields = dict(raw)
    token, reusable = fields.get("identifier_sealed"), False
    if "identifier_sealed" in fields:
        fields["identifier"], reusable = _unsealed(fields, "identifier_sealed", sealer)
    if "buyer_sealed" in fields:
        fields.update(_buyer_fields(_unsealed(fields, "buyer_sealed", sealer)[0]))
    # The kind chooses the schema; never the fields present (a payment payload without
    # imp_uid stays invalid), and the schema judges the kind itself.
    schema = _schema_of(fields)
    try:
        data: dict[str, Any] = schema.load(fields)
    except ValidationError as error:
        raise InvalidPayload(_flatten(error.messages)) from None
    options = {
        key: value
        for key, value in data.items()
        if key not in _JOB_FIELDS | {"identifier"} and value is not None
    }
    # Reused only when it seals the normalised digits themselves, under the newest key.
    same = reusable and isinstance(token, str) and data["identifier"] == fields["identifier"]
    return ReceiptRequest(
        job=payload_job(data),
        identifier=data["identifier"],
        merchant_uid=data.get("merchant_uid"),
        options=options,
        sealed_identifier=token if same else None,
    )


def _unsealed(fields: dict[str, Any], name: str, sealer: Unsealer | None) -> tuple[str, bool]:
    """The value of a sealed field, and whether the newest key sealed it."""
    sealed = fields.pop(name)
    if name == "identifier_sealed" and "identifier" in fields:
        raise InvalidPayload({name: ["Give identifier or identifier_sealed, not both."]})
    if not isinstance(sealed, str):
        raise InvalidPayload({name: ["Must be a Fernet token string."]})
    if sealer is None:
        raise PayloadUnreadable({name: ["No key is configured to unseal it."]})
    try:
        return sealer.open(sealed)
    except UnsealError as error:
        raise PayloadUnreadable({name: [f"Invalid: {error}."]}) from None


def resealed(payload: Mapping[str, Any], sealer: Sealing) -> dict[str, Any] | None:
    """``payload`` with every sealed field under the newest key; None: all were already.

    What ``cashreceipt reseal`` writes back, so that the keys before the newest
    can be dropped. Raises :class:`PayloadUnreadable` for a field no key opens.
    """
    copy, changed = dict(payload), False
    for name in sorted(SEALED_FIELDS & copy.keys()):
        token = copy[name]
        if not isinstance(token, str):
            continue  # no token: nothing to re-seal (a load refuses it anyway)
        try:
            value, newest = sealer.open(token)
        except UnsealError as error:
            raise PayloadUnreadable({name: [f"Invalid: {error}."]}) from None
        if not newest:
            copy[name], changed = sealer.seal(value), True
    return copy if changed else None


def kept_unreadable(raw: Mapping[str, Any]) -> dict[str, Any]:
    """What a job keeps of a payload no key opens: its sealed and impersonal known fields.

    The tokens stay as they came, so that the job can be replayed once the key
    that sealed them is back; a personal field in clear and any field no schema
    knows are dropped, as the normalised payload drops them.
    """
    return {
        key: value
        for key, value in raw.items()
        if key in PAYLOAD_FIELDS and key not in PERSONAL_FIELDS
    }


def _buyer_fields(text: str) -> dict[str, Any]:
    """The buyer fields inside ``buyer_sealed``: a JSON object of name, e-mail and phone."""
    try:
        buyer = json.loads(text)
    except ValueError:
        buyer = None
    if not isinstance(buyer, dict) or not set(buyer) <= set(BUYER_FIELDS):
        raise InvalidPayload({"buyer_sealed": ["Must seal an object of buyer fields."]})
    return buyer


def payload_from_args(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], sealer: Unsealer | None = None
) -> ReceiptRequest:
    """Validate a task message's arguments: exactly one positional payload object."""
    return load_payload(single_argument(args, kwargs), sealer)


def single_argument(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> object:
    """The one positional argument a task message must carry."""
    if len(args) != 1 or kwargs:
        raise InvalidPayload(
            {"_payload": ["Expected exactly one positional argument: the payload object."]}
        )
    return args[0]


def _flatten(messages: Any) -> dict[str, list[str]]:
    if isinstance(messages, Mapping):
        return {
            str(key): [str(item) for item in (value if isinstance(value, list) else [value])]
            for key, value in messages.items()
        }
    return {"_payload": [str(item) for item in messages]}


def naming_payload(job: JobKey) -> dict[str, Any]:
    """The least payload that names ``job``: what a claim records for a job it only ends."""
    if job.provider == PORTONE:
        return {"provider": job.provider, "kind": job.kind, "payment_id": job.id}
    if job.kind == EXTERNAL:
        return {"provider": job.provider, "kind": job.kind, "merchant_uid": job.id}
    return {"imp_uid": job.id}


def readable_job(raw: object) -> JobKey | None:
    """The job a payload names when it can be read, so even a bad payload's event names it.

    Its ``provider`` and ``kind`` as given (their defaults when absent), and the id
    of that kind judged as :func:`readable_imp_uid` judges an imp_uid: None when any
    of them cannot be read.
    """
    if not isinstance(raw, Mapping):
        return None
    provider, kind = raw.get("provider", IAMPORT), raw.get("kind", PAYMENT)
    if provider not in (IAMPORT, PORTONE) or kind not in KINDS:
        return None
    if provider == PORTONE:
        payment_id = _readable_id(raw.get("payment_id"))
        return JobKey.portone(payment_id, kind) if payment_id is not None else None
    if kind == EXTERNAL:
        merchant_uid = _readable_id(raw.get("merchant_uid"))
        return JobKey.external(merchant_uid) if merchant_uid is not None else None
    imp_uid = readable_imp_uid(raw)
    return JobKey.payment(imp_uid) if imp_uid is not None else None


def kept_job(job: JobKey, kept: Mapping[str, Any] | None) -> JobKey:
    """``job`` as the payload it keeps (``kept``: an issue's or a refund's) names it: a
    ``portone:`` receipt key does not say the kind, the payload does. ``job`` itself when
    the payload names no job, or another one."""
    named = readable_job(kept or {})
    return named if named == job else job


def _readable_id(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= 100 and encodable(value):
        return value
    return None


def readable_imp_uid(raw: object) -> str | None:
    """The payload's imp_uid when one can be read, so even a bad payload can be reported.

    One UTF-8 cannot encode is not readable: it names a key, and no stand-in for it
    may name another payment's.
    """
    return _readable_id(raw.get("imp_uid")) if isinstance(raw, Mapping) else None


def top_level_strings(text: str) -> dict[str, str]:
    """The string members at the top level of a JSON object, read from text no parser
    accepts: nested deeper than any parser follows, cut off, or with bytes that are not
    UTF-8 (decoded with ``surrogateescape``, so that they stay unencodable).

    Only so that a payload that cannot be read whole is still reported under its
    payment's id (:func:`readable_imp_uid` then judges the id). One pass, no
    recursion; a member whose value is not a string is skipped, and a repeated
    name keeps its last value, as ``json.loads`` does.
    """
    found: dict[str, str] = {}
    text = text.lstrip()
    if not text.startswith("{"):
        return found
    expecting_key, name = True, None
    for part in _top_level_tokens(text):
        if part == ":":
            expecting_key = False
        elif part == ",":
            expecting_key, name = True, None
        else:
            value = _json_string(part)
            if expecting_key:
                name = value
            elif name is not None and value is not None:
                found[name] = value
    return found


def _top_level_tokens(text: str) -> Iterator[str]:
    """The ``:``, ``,`` and string tokens (quoted, as written) directly inside the object
    ``text`` opens, in order; nothing deeper. Ends with the object, or where the text does."""
    depth, index = 0, 0
    while index < len(text):
        char = text[index]
        if char == '"':
            end = _string_end(text, index)
            if end < 0:
                return
            if depth == 1:
                yield text[index : end + 1]
            index = end + 1
            continue
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
            if depth <= 0:
                return
        elif depth == 1 and char in ":,":
            yield char
        index += 1


def _json_string(token: str) -> str | None:
    try:
        value = json.loads(token)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _string_end(text: str, start: int) -> int:
    """The index of the quote that ends the JSON string opened at ``start``; -1 if none."""
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == '"':
            return index
        index += 1
    return -1


def readable_merchant_uid(raw: object) -> str | None:
    """Like :func:`readable_imp_uid`, for the merchant's order id; only shown, so a surrogate
    in it is shown as U+FFFD."""
    if isinstance(raw, Mapping):
        value = raw.get("merchant_uid")
        if isinstance(value, str) and len(value) <= 100:
            return shown_text(value)
    return None


class PaymentCancelledSchema(Schema):
    """The ``cancel_cash_receipt`` payload: which receipt, and how much was refunded.

    ``amount`` is the refunded amount, as it always was (the issue payload's ``amount``
    is the total: one name, two meanings, said wherever both appear). A payment's
    balance is read from i'mport; an external receipt has no payment behind it, so its
    partial refund says what is left: ``remaining_amount`` (and ``remaining_tax_free``
    for a mixed-tax sale). ``refund_id`` names one refund, so that the same refund sent
    twice is one task (:func:`worker.celery.producer.enqueue_cancel`).
    """

    class Meta:
        unknown = EXCLUDE

    provider = _provider()
    kind = _kind()
    # Which of these names the job is the provider's and the kind's to say
    # (_the_kinds_own_fields).
    imp_uid = provider_id(required=False)
    merchant_uid = provider_id(required=False)
    payment_id = provider_id(required=False)
    # The refunded amount of a partial refund; absent for a full one.
    amount = fields.Integer(
        load_default=None, allow_none=True, strict=True, validate=validate.Range(min=1)
    )
    refund_id = _optional_text(100)
    remaining_amount = _amount()
    remaining_tax_free = _amount()
    reason = _optional_text(200)

    @validates_schema(skip_on_field_errors=False)
    def _the_kinds_own_fields(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("provider") == PORTONE:
            _portone_refund(data)
            return
        if data.get("kind") == EXTERNAL:
            _external_refund(data)
            return
        if data.get("imp_uid") is None:
            raise ValidationError("Missing data for required field.", field_name="imp_uid")
        _balance_unsaid(data, "i'mport computes a payment's balance")


def _portone_refund(data: Mapping[str, Any]) -> None:
    """A PortOne V2 receipt's refund names its payment_id. V2's cancel takes no amount: a
    partial refund is a cancel and a re-issue of the balance. An external receipt's
    refund says the balance (as V1's does); a V2 payment's names its refunded ``amount``,
    as a V1 payment's does, and its balance is read from PortOne's payment."""
    if data.get("payment_id") is None:
        raise ValidationError("Missing data for required field.", field_name="payment_id")
    if data.get("kind") == EXTERNAL:
        _balance_said(data)
        return
    _balance_unsaid(data, "PortOne's payment says a V2 payment's balance")


def _external_refund(data: Mapping[str, Any]) -> None:
    """An external receipt's refund names its merchant_uid, and a partial one its balance."""
    if data.get("merchant_uid") is None:
        raise ValidationError("Missing data for required field.", field_name="merchant_uid")
    _balance_said(data)


def _balance_unsaid(data: Mapping[str, Any], because: str) -> None:
    """A payment's refund leaves the balance to the provider's payment to say."""
    for name in ("remaining_amount", "remaining_tax_free"):
        if data.get(name) is not None:
            raise ValidationError(f"Only for an external receipt: {because}.", field_name=name)


def _balance_said(data: Mapping[str, Any]) -> None:
    """A partial refund with no payment to read the balance from says it."""
    remaining, tax_free = data.get("remaining_amount"), data.get("remaining_tax_free")
    if data.get("amount") is not None and remaining is None:
        raise ValidationError(
            "Required with amount: an external receipt has no payment to read the balance from.",
            field_name="remaining_amount",
        )
    if tax_free is not None and (remaining is None or tax_free > remaining):
        raise ValidationError("Must not exceed remaining_amount.", field_name="remaining_tax_free")


_CANCEL_SCHEMA = PaymentCancelledSchema()


def load_cancellation(raw: object) -> dict[str, Any]:
    """Validate a payment-cancelled payload or raise :class:`InvalidPayload`.

    An external receipt's refund that leaves nothing (``remaining_amount`` 0) is a full
    one: it keeps no balance fields, so every reader sees a full refund.
    """
    if not isinstance(raw, Mapping):
        raise InvalidPayload({"_payload": ["Must be a JSON object."]})
    try:
        data: dict[str, Any] = _CANCEL_SCHEMA.load(dict(raw))
    except ValidationError as error:
        raise InvalidPayload(_flatten(error.messages)) from None
    if data["provider"] == PORTONE:
        data.pop("imp_uid", None)
        data.pop("merchant_uid", None)
    else:
        data.pop("payment_id", None)
    if data["kind"] == EXTERNAL:
        data.pop("imp_uid", None)
        if data.get("remaining_amount") == 0:
            data["remaining_amount"] = data["remaining_tax_free"] = None
    return {key: value for key, value in data.items() if value is not None}


def payload_job(message: Mapping[str, Any]) -> JobKey:
    """The job a validated payload (an issue's or a cancellation's) names: by its
    provider and kind, the id of that kind."""
    if message.get("provider") == PORTONE:
        return JobKey.portone(message["payment_id"], message.get("kind", PAYMENT))
    if message.get("kind") == EXTERNAL:
        return JobKey.external(message["merchant_uid"])
    return JobKey.payment(message["imp_uid"])


def partial_refund(message: Mapping[str, Any]) -> bool:
    """Whether a validated cancellation is a partial refund: a receipt for the balance
    follows its cancel. A payment's names its refunded ``amount`` (its provider's payment
    knows the balance); an external receipt's names the balance itself."""
    if message.get("kind") == EXTERNAL:
        return message.get("remaining_amount") is not None
    return message.get("amount") is not None
