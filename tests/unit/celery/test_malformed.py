"""Which message bodies Celery would choke on, and what can still be read from them."""

from __future__ import annotations

import pytest

from worker.celery.malformed import body_problem, header_problem, readable_payload


@pytest.mark.parametrize(
    "body",
    [
        [[{"imp_uid": "imp_1"}], {}, {"callbacks": None}],
        [[], {}, None],
        ([1, 2], {"x": 1}, {}),
        {"args": [{"imp_uid": "imp_1"}], "kwargs": {}},
    ],
)
def test_celery_shaped_bodies_pass(body: object) -> None:
    """Protocol-2 triples and protocol-1 mappings go on to Celery untouched."""
    assert body_problem(body) is None


@pytest.mark.parametrize(
    "body",
    [
        {"imp_uid": "imp_1", "identifier": "01012345678"},
        "just a string",
        5,
        None,
        [],
        [[], {}],
        [{"imp_uid": "imp_1"}, {}, {}],
        [[], [], {}],
        [[], {}, "embed"],
        {"args": "x"},
    ],
)
def test_other_bodies_are_malformed(body: object) -> None:
    """Anything Celery would fail to unpack is caught with a reason."""
    assert body_problem(body)


@pytest.mark.parametrize(
    ("body", "raw", "expected"),
    [
        ([[{"imp_uid": "imp_1"}], {}, {}], b"", {"imp_uid": "imp_1"}),
        ([[], {}, {}], b"", None),
        ({"imp_uid": "imp_2"}, b"", {"imp_uid": "imp_2"}),
        (None, b'garbage {"imp_uid": "imp_3", oops', {"imp_uid": "imp_3"}),
        (None, b"garbage", None),
    ],
)
def test_readable_payload(body: object, raw: bytes, expected: object) -> None:
    """The likely payload is found inside a triple, a bare object, or raw bytes."""
    assert readable_payload(body, raw) == expected


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"id": "t"}, None),
        ({"id": "t", "retries": 0}, None),
        ({"id": "t", "retries": 3}, None),
        ({"id": "t", "retries": None}, "The message's retries header is not a count."),
        ({"id": "t", "retries": -1}, "The message's retries header is not a count."),
        ({"id": "t", "retries": "1"}, "The message's retries header is not a count."),
        ({"id": "t", "retries": True}, "The message's retries header is not a count."),
    ],
)
def test_retries_must_be_a_count_or_absent(headers: dict[str, object], problem: str | None) -> None:
    assert header_problem(headers) == problem


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"id": "t", "eta": None, "expires": None}, None),
        ({"id": "t", "eta": "2026-12-01T00:00:00+00:00", "expires": 60}, None),
        # Celery's parser turns a bad string into InvalidTaskError (an event), but a
        # falsy list or object raised AttributeError inside its request (parked).
        ({"id": "t", "eta": []}, "The message's eta header is not a date."),
        ({"id": "t", "expires": {}}, "The message's expires header is not a date."),
        ({"id": "t", "eta": True}, "The message's eta header is not a date."),
    ],
)
def test_eta_and_expires_must_be_dates_or_absent(
    headers: dict[str, object], problem: str | None
) -> None:
    assert header_problem(headers) == problem


def test_a_task_id_utf8_cannot_encode_is_a_header_problem() -> None:
    """JSON's "\\ud800" in the id: no event key could hold it, so the message is malformed."""
    assert header_problem({"id": "t-\ud800"}) == "The message's task id is not Unicode text."
    assert header_problem({"id": "t-\U0001f600"}) is None


@pytest.mark.parametrize(
    ("timelimit", "refused"),
    [
        (None, False),
        ([30, 60], False),
        ([None, None], False),
        ((1.5, None), False),
        (30, True),
        ([30], True),
        ("x", True),
        ([30, 60, 90], True),
        ({"a": 1}, True),
        ([True, 60], True),
        (["30", 60], True),
    ],
)
def test_timelimit_must_be_soft_and_hard_seconds(timelimit: object, refused: bool) -> None:
    """Celery unpacks ``timelimit`` into (soft, hard) inside its request: anything else
    raised there, and a readable message was parked with no event (review of issue 14,
    F6). Now it is malformed: one ``invalid_payload`` event."""
    problem = header_problem({"id": "t", "timelimit": timelimit})
    assert (problem is not None) == refused
    if refused:
        assert problem == "The message's timelimit header is not [soft, hard] seconds."
