"""Masked forms of personal data."""

from __future__ import annotations

import pytest

from worker.core.masking import (
    PAYLOAD_FIELDS,
    SEALED_FIELDS,
    mask_identifier,
    mask_payload,
    mask_strictly,
    mask_text,
    masked_args_repr,
    shown_token,
    unknown_fields_redacted,
)
from worker.core.schemas import (
    ExternalReceiptSchema,
    PaymentCancelledSchema,
    PaymentConfirmedSchema,
    PortOneReceiptSchema,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("01012345432", "010****5432"),
        ("010-1234-5432", "010****5432"),
        ("9710139019902", "971******9902"),
        ("123456789", "*********"),
        ("", ""),
    ],
)
def test_mask_identifier(value: str, expected: str) -> None:
    """First three and last four digits survive; short values are starred whole."""
    assert mask_identifier(value) == expected


def test_mask_text_hides_numbers_in_free_text() -> None:
    """Provider messages that echo a number are masked before anyone sees them."""
    text = mask_text("식별번호 010-1234-5678 오류 (TS1) code 42")
    assert "1234" not in text
    assert "010****5678" in text
    assert "code 42" in text


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("call 010.9777.0042 today", "call 010****0042 today"),
        ("tel (010) 9777-0042.", "tel 010****0042."),
        ("tel (02)977-0042", "tel *********"),
        ("mail gildong.hong@example.co.kr now", "mail g***@example.co.kr now"),
        ("hosts 127.0.0.1 and 192.168.100.200", "hosts 127.0.0.1 and 192.168.100.200"),
        ("version 1.20.3 on 2026-12-06 05:00", "version 1.20.3 on 2026-12-06 05:00"),
    ],
)
def test_mask_text_hides_numbers_and_addresses_as_people_write_them(text: str, shown: str) -> None:
    """A buyer's number with dots or a bracketed area code, and an e-mail address, are
    masked too; addresses of hosts, versions and dates are not numbers of people."""
    assert mask_text(text) == shown


@pytest.mark.parametrize(
    "task_id",
    [
        "758db68f-5558-4b35-9a2d-123456789012",  # a last group of digits only
        "758db68f-1234-5678-9012-abcdefabcdef",  # three middle groups of digits only
    ],
)
def test_mask_text_keeps_task_ids_whole(task_id: str) -> None:
    """A UUID is a task id, never an identifier: it survives, and the text around it is masked."""
    text = mask_text(f"Task issue_cash_receipt[{task_id}] for 01012345678 and x_{task_id}")
    assert text == f"Task issue_cash_receipt[{task_id}] for 010****5678 and x_{task_id}"


def test_mask_text_keeps_imp_uids_whole() -> None:
    """i'mport's ids (imp_ and 12 digits) are what operators search for; the buyer's are not."""
    text = mask_text("imp_448712340638 for 01012345678 (imp_uid=imp_448712340638)")
    assert text == "imp_448712340638 for 010****5678 (imp_uid=imp_448712340638)"


def test_mask_text_masks_digits_glued_to_a_uuid_shape() -> None:
    """Only a whole UUID is spared: a longer hex run that merely contains one is masked."""
    text = mask_text("0758db68f-5558-4b35-9a2d-1234567890123")
    assert "1234567890123" not in text


def test_mask_payload() -> None:
    """Every personal field of a payload is masked; the rest is kept."""
    masked = mask_payload(
        {
            "imp_uid": "imp_1",
            "identifier": "01012345678",
            "buyer_tel": "01099998888",
            "buyer_email": "kim@example.com",
            "buyer_name": "홍길동",
            "tax_free": 0,
        }
    )
    assert masked == {
        "imp_uid": "imp_1",
        "identifier": "010****5678",
        "buyer_tel": "010****8888",
        "buyer_email": "k***@example.com",
        "buyer_name": "***",
        "tax_free": 0,
    }


def test_masked_args_repr_never_shows_personal_data() -> None:
    """Flower's view of task arguments: masked fields, sealed marker, nothing raw."""
    shown = masked_args_repr(
        [{"imp_uid": "imp_1", "identifier": "01012345678", "identifier_sealed": "gAAAA-token"}]
    )
    assert "01012345678" not in shown
    assert "gAAAA-token" not in shown
    assert "<sealed>" in shown
    assert "imp_1" in shown
    assert masked_args_repr(["01012345678"]) == "['<redacted>']"
    assert masked_args_repr("01012345678") == "<redacted>"
    assert masked_args_repr([{"nested": {"identifier": "01012345678"}}]) == (
        "[{'nested': '<redacted>'}]"
    )


@pytest.mark.parametrize(
    ("field", "value", "shown"),
    [
        ("imp_uid", "imp_448712340638", "imp_448712340638"),
        ("merchant_uid", "order-7", "order-7"),
        ("identifier_type", "phone", "phone"),
        ("type", "company", "company"),
        ("tax_free", 1000, 1000),
        ("amount", 5000, 5000),
        ("merchant_uid", None, None),
        ("identifier_sealed", "gAAAA-token", "<sealed>"),
        ("buyer_sealed", "gAAAA-token", "<sealed>"),
        # Known, but not known to be impersonal: by name only.
        ("company_tel", "01012345678", "<redacted>"),
        ("corp_reg_no", "1168200276", "<redacted>"),
        ("reason", "홍길동 고객 요청", "<redacted>"),
        # Misspelt or unknown: whatever the value, by name only.
        ("identifer", "01012345678", "<redacted>"),
        ("customer_tel", "010-1234-5678", "<redacted>"),
        ("buyer_phone", "01012345678", "<redacted>"),
        ("customer_email", "kim@example.com", "<redacted>"),
        ("customer_tel", 1012345678, "<redacted>"),
        ("customer", {"tel": "01012345678", "name": "홍길동"}, "<redacted>"),
        ("phones", ["01012345678"], "<redacted>"),
        ("flag", True, "<redacted>"),
        ("nothing", None, "<redacted>"),
        # A known field holding an object is not shown either.
        ("imp_uid", {"tel": "01012345678"}, "<redacted>"),
    ],
)
def test_mask_payload_shows_only_the_allowed_fields(
    field: str, value: object, shown: object
) -> None:
    """Allow-list: a field is shown as it is only when it is known to be impersonal."""
    assert mask_payload({field: value}) == {field: shown}


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("01012345678", "***********"),
        ("tel 010-1234-5678", "tel ***-****-****"),
        ("x" * 100, "x" * 40),
        ("a\ud800b\n", "a\\ud800b\\n"),
        (7, "7"),
    ],
)
def test_an_unknown_key_is_shown_capped_escaped_and_masked(key: object, shown: str) -> None:
    """A key is producer text too: no number, no unprintable character, no flood in it."""
    assert mask_payload({key: "x"}) == {shown: "<redacted>"}


def test_every_schema_field_is_classified() -> None:
    """A field a schema gains must be placed: shown, masked or by name only."""
    schema_fields = {
        *PaymentConfirmedSchema().fields,
        *ExternalReceiptSchema().fields,
        *PortOneReceiptSchema().fields,
        *PaymentCancelledSchema().fields,
    }
    assert schema_fields | SEALED_FIELDS == PAYLOAD_FIELDS


def test_unknown_fields_redacted_keeps_what_a_replay_reads() -> None:
    """The replayable form: every schema field as it came, unknown ones by name only."""
    payload = {
        "imp_uid": "imp_1",
        "identifier_sealed": "gAAAA-token",
        "company_name": "Shop",
        "reason": "고객 요청",
        "customer_tel": "01012345678",
        "extra": {"tel": "01012345678"},
    }
    assert unknown_fields_redacted(payload) == {
        **payload,
        "customer_tel": "<redacted>",
        "extra": "<redacted>",
    }


def test_masked_args_repr_hides_unknown_fields() -> None:
    """What Flower shows of a bare producer's payload with a misspelt field."""
    shown = masked_args_repr([{"imp_uid": "imp_1", "identifer": "01012345678"}])
    assert shown == "[{'imp_uid': 'imp_1', 'identifer': '<redacted>'}]"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("identifier_type", "9001011234567", id="a resident number as the type"),
        pytest.param("type", "010-1234-5678", id="a phone number as the receipt type"),
        pytest.param("amount", "01012345678", id="an amount that is text"),
        pytest.param("tax_free", True, id="an amount that is a flag"),
    ],
)
def test_a_shown_field_holding_what_it_cannot_hold_is_redacted(field: str, value: object) -> None:
    """The allow-list shows a field's value only when it is one the field may hold."""
    assert mask_payload({field: value})[field] == "<redacted>"


def test_shown_fields_keep_their_valid_values() -> None:
    shown = {"identifier_type": "phone", "type": "company", "amount": 11000, "tax_free": 0}
    assert mask_payload(shown) == shown


@pytest.mark.parametrize(
    "key",
    [
        "tel01012345678",
        "customer_tel_01012345678",
        "a8001011234567",
        "x1234567",
        "tel_010_1234_5678",
        "tel010.1234.5678",
        "t0e1l0-1x2y3z4-5a6b7c8",
    ],
)
def test_digits_glued_to_an_unknown_name_are_masked(key: str) -> None:
    [shown] = mask_payload({key: "x"})
    assert not any(run in shown for run in ("1234567", "0101234", "8001011"))
    assert sum(ch.isdigit() for ch in shown) == 0, shown  # split or glued, no digit is kept


@pytest.mark.parametrize("key", ["buyer_tel2", "line_1", "v2026"])
def test_a_name_with_few_digits_is_shown_whole(key: str) -> None:
    assert mask_payload({key: "x"}) == {key: "<redacted>"}


@pytest.mark.parametrize(
    "value",
    [
        "0b5a3c1e-8f2d-4e7a-9c3b-1d2e3f4a5b6c",
        "issue_cash_receipt",
        "tasks.receipts.issue_cash_receipt",
        "gen4242@worker-1.internal",
        None,
    ],
)
def test_a_header_of_celerys_own_shape_is_shown(value: object) -> None:
    assert shown_token(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "01012345678",
        "tel_010_1234_5678",
        "010.1234.5678",
        "kim@example.com",
        "gen1@01012345678",
        "홍길동",
        "a b",
        "x" * 201,
        7,
        ["01012345678"],
    ],
)
def test_a_header_of_any_other_shape_is_redacted(value: object) -> None:
    """A producer's ``shadow``, ``root_id`` or ``task`` can hold a phone number."""
    assert shown_token(value) == "<redacted>"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("unknown task 'tel_010_9777_1234'", "unknown task 'tel_***_****_****'"),
        ("unknown task 'issue_01097771234'", "unknown task 'issue_***********'"),
        ("tel.010.9777.1234 and 010 9777 1234", "tel.***.****.**** and 010****1234"),
        ("unknown task 'reissue_cash_receipt_v2'", "unknown task 'reissue_cash_receipt_v2'"),
        ("invalid task message: ValueError", "invalid task message: ValueError"),
    ],
)
def test_strict_masking_hides_digits_however_glued(text: str, shown: str) -> None:
    """A parked message's reason repeats its producer's task name, and a queue entry that
    is no message is garbage: no id of ours is in either, so a number glued to a name by
    ``_`` (which free text keeps, for ``imp_`` ids) is hidden too (review of issue 14, F3)."""
    assert mask_strictly(text) == shown
