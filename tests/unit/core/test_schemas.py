"""The payload schema: what is accepted, what is refused, and in which words."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import fields

from tests.support.payloads import external_payload
from worker.adapters.privacy.sealing import Sealer
from worker.core.schemas import (
    InvalidPayload,
    PaymentConfirmedSchema,
    business_number_checks,
    load_cancellation,
    load_payload,
    payload_from_args,
    readable_imp_uid,
    readable_job,
    readable_merchant_uid,
    top_level_strings,
)
from worker.core.types import JobKey

PHONE = "01012345678"


def payload(**fields: Any) -> dict[str, Any]:
    """A valid payload with ``fields`` changed."""
    return {"imp_uid": "imp_1", "identifier": PHONE, **fields}


def errors_of(raw: object) -> dict[str, list[str]]:
    """The field errors of a payload that must be refused."""
    with pytest.raises(InvalidPayload) as caught:
        load_payload(raw)
    return caught.value.errors


def test_minimal_payload_defaults_type_to_person() -> None:
    """Only imp_uid and identifier are required; type defaults to person."""
    request = load_payload(payload())
    assert request.imp_uid == "imp_1"
    assert request.receipt_fields() == {"identifier": PHONE, "type": "person"}


def test_separators_are_stripped() -> None:
    """Hyphens and spaces in the identifier are tolerated and removed."""
    assert load_payload(payload(identifier="010-1234 5678")).identifier == PHONE


def test_unknown_fields_are_dropped() -> None:
    """Unknown fields never reach the request body."""
    request = load_payload(payload(amount=5000, note="hi", identifier_type="phone"))
    assert request.receipt_fields() == {
        "identifier": PHONE,
        "identifier_type": "phone",
        "type": "person",
    }


def test_every_known_field_is_sent() -> None:
    """All spec fields the payload gives are passed on to i'mport."""
    fields = {
        "identifier_type": "business",
        "identifier": "1168200276",
        "type": "company",
        "company_tel": "02-123-4567",
        "company_name": "Shop",
        "corp_reg_no": "1168200276",
        "buyer_name": "홍길동",
        "buyer_email": "a@example.com",
        "buyer_tel": "01000000000",
        "tax_free": 100,
    }
    request = load_payload(payload(merchant_uid="order-1", **fields))
    assert request.merchant_uid == "order-1"
    assert request.receipt_fields() == fields


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"identifier": PHONE}, "imp_uid"),
        ({"imp_uid": "imp_1"}, "identifier"),
        (payload(identifier="0101234567a"), "identifier"),
        (payload(identifier="12345"), "identifier"),
        (payload(identifier="1" * 20), "identifier"),
        (payload(identifier=["010"]), "identifier"),
        (payload(identifier=1012345678), "identifier"),  # a number lost its leading 0
        (payload(identifier=10**5000), "identifier"),
        (payload(identifier_type="passport"), "identifier_type"),
        (payload(identifier_type="phone", identifier="0212345678"), "identifier"),
        (payload(identifier_type="business", identifier="123456789012"), "identifier"),
        (payload(identifier_type="business", identifier="1168200277"), "identifier"),
        (payload(identifier_type="person", identifier="9713139019902"), "identifier"),
        (payload(identifier_type="person", identifier="97101390199"), "identifier"),
        (payload(identifier_type="taxcard", identifier="123456789012"), "identifier"),
        (payload(type="business"), "type"),
        (payload(tax_free=-1), "tax_free"),
        (payload(tax_free="100"), "tax_free"),
        (payload(tax_free=1.5), "tax_free"),
        (payload(buyer_email="not-an-email"), "buyer_email"),
    ],
)
def test_refused_with_field_error(raw: dict[str, Any], field: str) -> None:
    """Each bad field is named in a plain-words error."""
    assert field in errors_of(raw)


@pytest.mark.parametrize("raw", [None, "text", 12, ["imp_1"], {"imp_uid": 1, "identifier": 2}])
def test_non_objects_are_refused(raw: object) -> None:
    """Anything that is not a JSON object with the right shapes is refused, not crashed on."""
    assert errors_of(raw)


@pytest.mark.parametrize(
    "identifier",
    ["9710139019902", "0123456789012", "123456789012345678", "010-9876-5432", "01198765432"],
)
def test_errors_never_echo_the_identifier(identifier: str) -> None:
    """Whatever is wrong, the message does not quote the identifier."""
    with pytest.raises(InvalidPayload) as caught:
        load_payload(payload(identifier=identifier, identifier_type="business", tax_free=-5))
    digits = identifier.replace("-", "")
    assert digits not in str(caught.value)
    assert identifier not in str(caught.value)


def test_task_arguments_must_be_one_payload() -> None:
    """No arguments, two arguments or keyword arguments are an invalid payload."""
    for args, kwargs in [((), {}), ((payload(), payload()), {}), ((), {"payload": payload()})]:
        with pytest.raises(InvalidPayload, match="exactly one positional argument"):
            payload_from_args(args, kwargs)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(payload(), "imp_1"), ({"imp_uid": 5}, None), ("imp_1", None), ({"imp_uid": ""}, None)],
)
def test_readable_imp_uid(raw: object, expected: str | None) -> None:
    """An imp_uid is read from a bad payload whenever it is a usable string."""
    assert readable_imp_uid(raw) == expected


@pytest.mark.parametrize(
    ("number", "valid"),
    [("1168200276", True), ("1208147521", True), ("1168200277", False), ("2061812345", False)],
)
def test_business_number_check_digit(number: str, valid: bool) -> None:
    """The NTS check digit (research §9.2): known-good numbers pass, altered ones fail."""
    assert business_number_checks(number) is valid


@pytest.mark.parametrize("identifier", ["9710139019902", "0501014123456", "1234567890123"])
def test_untyped_13_digits_are_not_judged(identifier: str) -> None:
    """Without identifier_type, 13 digits may be a resident number or a card: i'mport decides."""
    assert load_payload(payload(identifier=identifier)).identifier == identifier


def test_new_resident_numbers_without_check_digit_pass() -> None:
    """Numbers issued since October 2020 have random digits: only the birth date is checked."""
    assert load_payload(payload(identifier="9710131987654", identifier_type="person"))


LONE = "\ud800"


#: Every text field of the issue payload, as the schema declares them.
TEXT_FIELDS = sorted(
    name
    for name, declared in PaymentConfirmedSchema().fields.items()
    if isinstance(declared, fields.String)
)


@pytest.mark.parametrize("field", TEXT_FIELDS)
def test_text_utf8_cannot_encode_is_refused(field: str) -> None:
    """A lone surrogate (JSON's "\\ud800") in any text field is an invalid payload, and the
    error neither echoes it nor holds one."""
    value = {"identifier": PHONE, "buyer_email": "kim@example.com"}.get(field, "imp_1") + LONE
    errors = errors_of(payload(**{field: value}))
    assert field in errors
    assert str(InvalidPayload(errors)).encode("utf-8")


@pytest.mark.parametrize("field", ["imp_uid", "merchant_uid", "reason"])
def test_cancellation_text_utf8_cannot_encode_is_refused(field: str) -> None:
    """The same rule for a refund's payload."""
    with pytest.raises(InvalidPayload) as caught:
        load_cancellation({"imp_uid": "imp_1", field: f"x{LONE}"})
    assert field in caught.value.errors
    assert "surrogate" in caught.value.errors[field][0]


def test_surrogate_pair_halves_are_refused_too() -> None:
    """Both halves of a pair, kept apart as Python can, are no more encodable than one."""
    assert "buyer_name" in errors_of(payload(buyer_name="\ud83d\ude00"))
    assert load_payload(payload(buyer_name="\U0001f600")).options["buyer_name"] == "\U0001f600"


def test_unreadable_text_is_never_echoed_in_a_failure() -> None:
    """The imp_uid names keys, so one with a surrogate is not read at all; the merchant_uid
    is only shown, with U+FFFD in the surrogate's place."""
    raw = {"imp_uid": f"imp_{LONE}", "merchant_uid": f"order-{LONE}"}
    assert readable_imp_uid(raw) is None
    assert readable_merchant_uid(raw) == "order-\ufffd"


@pytest.mark.parametrize("imp_uid", [".", ".."])
def test_a_dot_segment_is_not_an_imp_uid(imp_uid: str) -> None:
    """``/receipts/..`` reaches ``/``: requests normalises the dots away, and the POST would
    name no payment (or another path). Refused for an issue and for a refund alike."""
    assert "Cannot be" in errors_of(payload(imp_uid=imp_uid))["imp_uid"][0]
    with pytest.raises(InvalidPayload) as caught:
        load_cancellation({"imp_uid": imp_uid, "amount": 1000})
    assert "imp_uid" in caught.value.errors


@pytest.mark.parametrize("imp_uid", ["...", ".x", "a/..", "%2E%2E"])
def test_ids_with_dots_that_are_not_a_dot_segment_pass(imp_uid: str) -> None:
    """Only the whole segment is special; the client quotes ``/`` and ``%``."""
    assert load_payload(payload(imp_uid=imp_uid)).imp_uid == imp_uid


DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("text", "found"),
    [
        pytest.param('{"imp_uid": "imp_1", "x": ' + DEEP + "}", {"imp_uid": "imp_1"}, id="deep"),
        pytest.param('{"imp_uid": "imp_1", "identifier": "0101', {"imp_uid": "imp_1"}, id="cut"),
        pytest.param('  {"a": "q\\"\\\\", "b": "\\u00e9"}', {"a": 'q"\\', "b": "é"}, id="escapes"),
        pytest.param('{"a": {"imp_uid": "no"}, "b": ["imp_uid", "no"]}', {}, id="only the top"),
        pytest.param('{"imp_uid": 5, "merchant_uid": "m"}', {"merchant_uid": "m"}, id="not text"),
        pytest.param('{"imp_uid": "a", "imp_uid": "b"}', {"imp_uid": "b"}, id="last wins"),
        pytest.param('["imp_uid", "x"]', {}, id="not an object"),
        pytest.param("", {}, id="empty"),
        pytest.param('{"imp_uid": "a"} {"imp_uid": "b"}', {"imp_uid": "a"}, id="one object"),
    ],
)
def test_top_level_strings_read_what_no_parser_reads_whole(
    text: str, found: dict[str, str]
) -> None:
    """Only so that a bad ingress entry is still reported under its payment's id."""
    assert top_level_strings(text) == found


def test_bytes_that_are_not_utf8_leave_their_string_unreadable() -> None:
    """Decoded with surrogateescape, a bad byte stays a surrogate: no stand-in id."""
    text = b'{"imp_uid": "imp_\xff", "merchant_uid": "m"}'.decode("utf-8", "surrogateescape")
    strings = top_level_strings(text)
    assert readable_imp_uid(strings) is None
    assert readable_merchant_uid(strings) == "m"


def test_provider_and_kind_default_to_a_v1_payment_and_are_not_sent() -> None:
    """Every payload valid before the contract named them keeps its meaning (issue 15)."""
    plain = load_payload(payload())
    explicit = load_payload(payload(provider="iamport", kind="payment"))
    assert plain == explicit
    assert not {"provider", "kind"} & set(explicit.receipt_fields())
    assert load_cancellation({"imp_uid": "imp_1", "provider": "iamport"})["provider"] == "iamport"


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [
        ("provider", "toss", "or PortOne V2"),
        ("provider", "IAMPORT", "or PortOne V2"),
        ("kind", "refund", "cash taken outside"),
        ("kind", None, "Field may not be null"),
        ("product_type", "physical", "Must be one of"),
        ("vat_amount", -1, "Must be from 0"),
        ("vat_amount", 1.5, "Not a valid integer"),
    ],
)
def test_what_this_release_does_not_serve_is_refused_by_name(
    field: str, value: object, said: str
) -> None:
    """A kind or a provider the release does not serve fails at once, in words, rather than
    being issued as a V1 payment's receipt."""
    assert said in errors_of(payload(**{field: value}))[field][0]


def test_product_type_and_vat_amount_are_sent() -> None:
    """KSNET requires ``product_type``; ``vat_amount`` was dropped as unknown before."""
    request = load_payload(payload(product_type="real", vat_amount=910))
    assert request.receipt_fields() == {
        "identifier": PHONE,
        "type": "person",
        "product_type": "real",
        "vat_amount": 910,
    }


EXTERNAL = external_payload(identifier=PHONE)


def test_an_external_receipt_is_named_by_its_merchant_uid() -> None:
    """``kind: external``: the job is ``iamport-external:<merchant_uid>``, and every receipt
    field goes to i'mport; the message a producer enqueues loads back to the same job."""
    request = load_payload({**EXTERNAL, "tax_free": 3000, "pay_method": "trans", "imp_uid": "x"})
    assert request.job == JobKey.external("order-7")
    assert request.imp_uid is None
    assert request.receipt_fields() == {
        "identifier": PHONE,
        "channel_key": "channel-key-test",
        "order_name": "Counter sale",
        "amount": 33000,
        "type": "person",
        "tax_free": 3000,
        "pay_method": "trans",
    }
    message = request.to_message(Sealer([], allow_plaintext=True))
    assert load_payload(message).job == request.job
    assert readable_job(message) == request.job


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"merchant_uid": None}, "merchant_uid"),
        ({"merchant_uid": ".."}, "merchant_uid"),
        ({"channel_key": ""}, "channel_key"),
        ({"order_name": None}, "order_name"),
        ({"amount": 0}, "amount"),
        ({"amount": "33000"}, "amount"),
        ({"tax_free": 33001}, "tax_free"),
        ({"vat_amount": 40000}, "vat_amount"),
        ({"pay_method": "card"}, "pay_method"),
        ({"identifier": "12"}, "identifier"),
    ],
)
def test_an_external_receipt_needs_what_i_mport_needs(change: dict[str, Any], field: str) -> None:
    """The kind is never guessed: an external payload without its fields is refused by
    name, and a payment payload without imp_uid stays invalid."""
    raw = {key: value for key, value in {**EXTERNAL, **change}.items() if value is not None}
    assert field in errors_of(raw)
    assert "imp_uid" in errors_of({key: v for key, v in EXTERNAL.items() if key != "kind"})
