"""Parked message records: replayable, and without the producer's argument reprs."""

from __future__ import annotations

import base64
import json
from typing import Any

from cryptography.fernet import Fernet

from worker.adapters.privacy.sealing import Sealer
from worker.adapters.store.dead_messages import dead_message_record, replayable
from worker.core.schemas import load_payload


def envelope_of(body: object, **headers: object) -> dict[str, Any]:
    """A kombu envelope as the Redis transport stores it: a base64 JSON body."""
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "headers": {"task": "new_task", "id": "t-1", **headers},
        "properties": {"delivery_tag": "x", "body_encoding": "base64"},
    }


def body(record: dict[str, Any]) -> Any:
    """The parked envelope's body, decoded as a worker would."""
    return json.loads(base64.b64decode(record["envelope"]["body"]))


def test_envelope_is_kept_with_reprs_redacted() -> None:
    """The body stays for replay; argsrepr and kwargsrepr, which a bare producer fills raw, go."""
    envelope = envelope_of([[{}], {}, {}], argsrepr="[{'identifier': '01012345678'}]")
    record = dead_message_record(
        reason="unknown task 'new_task'", queue="cash_receipts", envelope=envelope, raw=None
    )
    assert (record["task"], record["id"], record["queue"]) == ("new_task", "t-1", "cash_receipts")
    assert body(record) == [[{}], {}, {}]
    assert record["envelope"]["headers"]["argsrepr"] == "<redacted>"
    assert "01012345678" not in str(record)
    assert envelope["headers"]["argsrepr"].startswith("[{")  # the caller's dict is untouched


def test_personal_fields_in_the_body_are_sealed_as_the_ledger_seals_them() -> None:
    """Decoded, the parked body holds the identifier and buyer only sealed; a worker opens them."""
    sealer = Sealer([Fernet.generate_key().decode()])
    payload = {
        "imp_uid": "imp_1",
        "identifier": "010-9777-0042",
        "buyer_name": "홍길동",
        "buyer_tel": "01098765432",
    }
    record = dead_message_record(
        reason="unknown task",
        queue="cash_receipts",
        envelope=envelope_of([[payload], {"payload": dict(payload)}, {}]),
        raw=None,
        sealer=sealer,
    )
    text = json.dumps(body(record), ensure_ascii=False)
    for value in ("9777", "0042", "홍길동", "98765432"):
        assert value not in text
    for sealed in (body(record)[0][0], body(record)[1]["payload"]):
        assert set(sealed) == {"imp_uid", "identifier_sealed", "buyer_sealed"}
        opened = load_payload(sealed, sealer)
        assert (opened.imp_uid, opened.identifier) == ("imp_1", "01097770042")
        assert json.loads(sealer.unseal(sealed["buyer_sealed"]))["buyer_name"] == "홍길동"


def test_without_a_key_personal_fields_are_masked() -> None:
    """Plaintext mode cannot seal: the parked body shows masked forms (no replay for it)."""
    record = dead_message_record(
        reason="unknown task",
        queue="cash_receipts",
        envelope=envelope_of([[{"imp_uid": "imp_1", "identifier": "01097770042"}], {}, {}]),
        raw=None,
        sealer=Sealer([], allow_plaintext=True),
    )
    assert body(record)[0][0] == {"imp_uid": "imp_1", "identifier": "010****0042"}


def test_a_body_that_is_not_json_is_kept_only_as_masked_text() -> None:
    """It cannot be sealed field by field: the body goes, its masked text stays."""
    envelope = envelope_of([])
    envelope["body"] = base64.b64encode(b"not json 01097770042").decode()
    record = dead_message_record(reason="undecodable", queue="q", envelope=envelope, raw=None)
    assert record["envelope"]["body"] is None
    assert record["raw"] == "not json 010****0042"


def test_unreadable_entry_is_kept_masked() -> None:
    """An entry that is not an envelope is kept as text, identifiers masked."""
    record = dead_message_record(
        reason="unreadable", queue="q", envelope=None, raw=b"junk 010-1234-5678 \xff"
    )
    assert record["envelope"] is None
    assert record["raw"].startswith("junk 010****5678")


def test_an_unreadable_entry_with_a_base64_body_is_kept_decoded_and_masked() -> None:
    """An entry kombu cannot take (no properties) still hides nothing in its base64 body."""
    payload = {"imp_uid": "imp_1", "identifier": "01097770042", "buyer_name": "홍길동"}
    entry = json.dumps(
        {"body": base64.b64encode(json.dumps([[payload], {}, {}]).encode()).decode()}
    )
    record = dead_message_record(reason="unreadable", queue="q", envelope=None, raw=entry.encode())
    shown = json.loads(record["raw"])
    assert shown["body"][0][0] == {
        "imp_uid": "imp_1",
        "identifier": "010****0042",
        "buyer_name": "***",
    }
    assert "97770042" not in record["raw"]


def test_unknown_fields_in_the_body_keep_their_name_but_not_their_value() -> None:
    """A misspelt or unknown field is never read by a replay: parked, its value is redacted,
    with a key or without, and in an argument with no known field at all."""
    unknown = {"identifer": "01097770042", "customer": {"tel": "01097770043"}}
    payload = {"imp_uid": "imp_1", "identifier": "01097770044", "company_name": "Shop", **unknown}
    envelope = envelope_of([[payload, dict(unknown)], {}, {}])
    for sealer in (Sealer([Fernet.generate_key().decode()]), Sealer([], allow_plaintext=True)):
        record = dead_message_record(
            reason="unknown task", queue="q", envelope=envelope, raw=None, sealer=sealer
        )
        first, second = body(record)[0]
        assert "9777004" not in json.dumps(body(record))
        assert (first["identifer"], first["customer"]) == ("<redacted>", "<redacted>")
        assert second == {"identifer": "<redacted>", "customer": "<redacted>"}
        if sealer.enabled:  # replayable: the fields a schema knows are kept
            assert (first["imp_uid"], first["company_name"]) == ("imp_1", "Shop")
            assert load_payload(first, sealer).identifier == "01097770044"


def test_a_lone_surrogate_in_the_body_is_kept_as_its_escape() -> None:
    """JSON's "\\ud800" decodes to text UTF-8 cannot encode: the body keeps the escape, still
    replayable, and the record can be written."""
    payload = {"imp_uid": "imp_1", "merchant_uid": "order-\ud800"}
    record = dead_message_record(
        reason="unknown task",
        queue="cash_receipts",
        envelope=envelope_of([[payload], {}, {}]),
        raw=None,
    )
    assert body(record) == [[payload], {}, {}]
    json.dumps(record, ensure_ascii=False).encode()


def test_a_body_nested_past_the_parser_is_kept_as_masked_text() -> None:
    """JSON nested 100,000 deep cannot be decoded to seal: like a body that is not JSON, only
    its masked text is kept, and the record can be written."""
    deep = b"[" * 100_000 + b"]" * 100_000
    envelope = {**envelope_of(None), "body": base64.b64encode(deep).decode()}
    record = dead_message_record(
        reason="unknown task", queue="cash_receipts", envelope=envelope, raw=None
    )
    assert record["envelope"]["body"] is None
    assert record["raw"].startswith("[[[")
    json.dumps(record)


def test_an_unreadable_entry_nested_past_the_parser_is_kept_as_text() -> None:
    """A queue entry that is not an envelope, nested past the parser: kept as its text."""
    deep = "[" * 100_000 + "]" * 100_000
    record = dead_message_record(reason="not JSON", queue="cash_receipts", envelope=None, raw=deep)
    assert record["raw"] == deep[: len(record["raw"])]


def test_headers_no_worker_reads_keep_their_name_but_not_their_value() -> None:
    """A producer's own header may hold anything: parked, it is shown by name only; the
    headers a replay needs stay as sent."""
    envelope = envelope_of(
        [[{"imp_uid": "imp_1"}], {}, {}], customer_tel="01097770042", ledger_fence=3, retries=1
    )
    envelope["headers"]["x-buyer"] = {"name": "홍길동"}
    record = dead_message_record(reason="unknown task", queue="q", envelope=envelope, raw=None)
    headers = record["envelope"]["headers"]
    assert (headers["customer_tel"], headers["x-buyer"]) == ("<redacted>", "<redacted>")
    assert (headers["task"], headers["id"], headers["ledger_fence"]) == ("new_task", "t-1", 3)
    assert headers["retries"] == 1
    assert "97770042" not in json.dumps(record) and "홍길동" not in json.dumps(record)


def test_text_outside_payloads_and_payloads_passed_by_name_hide_personal_data() -> None:
    """Celery's embed and a producer's garbage are not payloads: their numbers and e-mail
    addresses are masked; a payload passed as a keyword is one, allow-listed."""
    embed = {"callbacks": None, "note": "call 010.9777.0042 or hong@example.com"}
    kwargs = {"payload": {"customer_tel": "01097770043", "merchant_uid": "m-1"}}
    record = dead_message_record(
        reason="unknown task", queue="q", envelope=envelope_of([[], kwargs, embed]), raw=None
    )
    _, shown_kwargs, shown_embed = body(record)
    assert shown_kwargs == {"payload": {"customer_tel": "<redacted>", "merchant_uid": "m-1"}}
    assert shown_embed == {"callbacks": None, "note": "call 010****0042 or h***@example.com"}


def test_what_sits_deeper_than_any_payload_is_not_kept() -> None:
    """A payload is at most four levels down; below that, nothing a replay reads: redacted."""
    deep: object = {"identifier": "01097770042", "buyer_name": "홍길동"}
    for _ in range(6):
        deep = [deep]
    record = dead_message_record(
        reason="unknown task", queue="q", envelope=envelope_of(deep), raw=None
    )
    text = json.dumps([record, body(record)], ensure_ascii=False)
    assert "97770042" not in text and "홍길동" not in text


def test_a_body_that_is_not_json_hides_e_mail_and_dotted_numbers() -> None:
    """Kept only as masked text, a body that is not JSON shows no address or number."""
    envelope = envelope_of([])
    envelope["body"] = base64.b64encode(b"buyer hong@example.com 010.9777.0042").decode()
    record = dead_message_record(reason="undecodable", queue="q", envelope=envelope, raw=None)
    assert record["raw"] == "buyer h***@example.com 010****0042"


def test_a_known_payload_field_holding_a_structure_is_redacted() -> None:
    """``imp_uid`` holding an object is no id a replay accepts; what it holds is not shown."""
    payload = {"imp_uid": {"tel": "01097770042"}, "merchant_uid": ["010.9777.0043"]}
    record = dead_message_record(
        reason="unknown task", queue="q", envelope=envelope_of([[payload], {}, {}]), raw=None
    )
    assert body(record)[0][0] == {"imp_uid": "<redacted>", "merchant_uid": "<redacted>"}


def test_protocol_headers_are_shown_only_in_celerys_own_shapes() -> None:
    """``task``, ``shadow``, ``root_id``, ``origin``, ``group`` and ``stamps`` are the
    producer's text too: a phone number in any of them is not kept in clear, and a
    record whose task or id had to go is not replayable (no worker could run it)."""
    envelope = envelope_of(
        [[{"imp_uid": "imp_1"}], {}, {}],
        shadow="01012345678",
        root_id="tel_010_1234_5678",
        parent_id="0b5a3c1e-8f2d-4e7a-9c3b-1d2e3f4a5b6c",
        origin="kim@example.com",
        group="010.9876.5432",
        stamps={"buyer": "01055554321"},
        eta="2026-12-06T10:00:00+00:00",
        expires="010-5555-4321",
        timelimit=[10, None],
    )
    envelope["headers"]["task"] = "tasks.01012345678"
    record = dead_message_record(reason="unknown task", queue="q", envelope=envelope, raw=None)
    headers = record["envelope"]["headers"]
    text = json.dumps(record, ensure_ascii=False)
    for digits in ("12345678", "1234", "98765432", "55554321", "5555"):
        assert digits not in text, digits
    assert "kim@" not in text
    assert record["task"] is None and headers["task"] == "<redacted>"
    assert headers["parent_id"] == "0b5a3c1e-8f2d-4e7a-9c3b-1d2e3f4a5b6c"
    assert headers["eta"] == "2026-12-06T10:00:00+00:00"
    assert headers["timelimit"] == [10, None]
    assert not replayable(record)


def test_a_record_with_celerys_own_headers_is_replayable() -> None:
    envelope = envelope_of([[{"imp_uid": "imp_1"}], {}, {}], root_id="t-1", shadow=None)
    record = dead_message_record(reason="unknown task", queue="q", envelope=envelope, raw=None)
    assert replayable(record)
    assert record["envelope"]["headers"]["root_id"] == "t-1"


def test_the_reason_and_raw_text_hide_a_number_glued_to_a_name() -> None:
    """``unknown task 'tel_010_9777_1234'`` named the number in the reason, the log line
    and ``cashreceipt parked``, and garbage kept it in ``raw`` (review of issue 14, F3)."""
    envelope = envelope_of([[{}], {}, {}])
    envelope["headers"]["task"] = "tel_010_9777_1234"
    record = dead_message_record(
        reason="unknown task 'tel_010_9777_1234'", queue="q", envelope=envelope, raw=None
    )
    garbage = dead_message_record(
        reason="not a message", queue="q", envelope=None, raw=b"issue_01097771234 tel_010_9777_1234"
    )
    for kept in (record, garbage):
        assert "9777" not in json.dumps(kept), kept
