"""Parked message records: replayable, and without the producer's argument reprs."""

from __future__ import annotations

from worker.parking import parked_record


def test_envelope_is_kept_with_reprs_redacted() -> None:
    """The body stays for replay; argsrepr and kwargsrepr, which a bare producer fills raw, go."""
    envelope = {
        "body": "W1t7fV0=",
        "headers": {"task": "new_task", "id": "t-1", "argsrepr": "[{'identifier': '01012345678'}]"},
        "properties": {"delivery_tag": "x"},
    }
    record = parked_record(
        reason="unknown task 'new_task'", queue="cash_receipts", envelope=envelope, raw=None
    )
    assert (record["task"], record["id"], record["queue"]) == ("new_task", "t-1", "cash_receipts")
    assert record["envelope"]["body"] == "W1t7fV0="
    assert record["envelope"]["headers"]["argsrepr"] == "<redacted>"
    assert "01012345678" not in str(record)
    assert envelope["headers"]["argsrepr"].startswith("[{")  # the caller's dict is untouched


def test_unreadable_entry_is_kept_masked() -> None:
    """An entry that is not an envelope is kept as text, identifiers masked."""
    record = parked_record(
        reason="unreadable", queue="q", envelope=None, raw=b"junk 010-1234-5678 \xff"
    )
    assert record["envelope"] is None
    assert record["raw"].startswith("junk 010****5678")
