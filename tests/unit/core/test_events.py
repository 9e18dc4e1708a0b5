"""The events of the messages that waited on a job: one template per way the job ends."""

from __future__ import annotations

from typing import Any

import pytest

from worker.core.events import (
    CANCEL_FAILED,
    CANCELLED,
    FAILED,
    ISSUED,
    WaiterEvent,
    cancelled_detail,
    event_data,
    waiter_event,
)
from worker.core.types import JobKey

OWNER: dict[str, Any] = {
    "event_id": "e-owner",
    "task_id": "t-owner",
    "imp_uid": "imp_1",
    "attempts": 2,
    "duplicate": False,
    "receipt": {"receipt_id": "r1"},
}
ERROR = {"error": {"reason": "rejected"}}


def _without(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in keys}


CASES = [
    pytest.param(
        "issued",
        ISSUED,
        OWNER,
        WaiterEvent(ISSUED, {**_without(OWNER, "task_id", "event_id"), "duplicate": True}, False),
        id="issued: the owner's receipt, as a duplicate",
    ),
    pytest.param(
        "failed",
        FAILED,
        {**_without(OWNER, "receipt"), **ERROR},
        WaiterEvent(
            FAILED,
            {**_without(OWNER, "task_id", "event_id", "receipt"), **ERROR, "duplicate": True},
            False,
        ),
        id="failed: the owner's failure",
    ),
    pytest.param(
        "issued",
        CANCELLED,
        {**OWNER, **ERROR},
        WaiterEvent(
            ISSUED, _without({**OWNER, "duplicate": True}, "task_id", "event_id", "receipt"), True
        ),
        id="a refund's transition: issued, with the live receipt, no error",
    ),
    pytest.param(
        "issued",
        CANCEL_FAILED,
        {**OWNER, **ERROR},
        WaiterEvent(
            ISSUED, _without({**OWNER, "duplicate": True}, "task_id", "event_id", "receipt"), True
        ),
        id="a failed cancellation: issued, with the live receipt, no error",
    ),
    pytest.param(
        "cancelled",
        CANCELLED,
        OWNER,
        WaiterEvent(
            FAILED,
            {
                **_without(OWNER, "task_id", "event_id", "receipt"),
                "duplicate": True,
                "error": cancelled_detail()["error"],
            },
            False,
        ),
        id="a full refund: failed, reason cancelled",
    ),
]


@pytest.mark.parametrize(("state", "event_type", "data", "expected"), CASES)
def test_waiter_event(
    state: str, event_type: str, data: dict[str, Any], expected: WaiterEvent
) -> None:
    assert waiter_event(state=state, event_type=event_type, data=data) == expected


def test_the_owners_data_is_not_changed() -> None:
    data = {**OWNER, **ERROR}
    waiter_event(state="issued", event_type=CANCELLED, data=data)
    assert data == {**OWNER, **ERROR}


@pytest.mark.parametrize(
    ("job", "named"),
    [
        pytest.param(
            JobKey.payment("imp_1"),
            {"receipt_key": "iamport:imp_1", "provider": "iamport", "kind": "payment"},
            id="a V1 payment",
        ),
        pytest.param(
            JobKey.external("order:1"),
            {"receipt_key": "iamport-external:order:1", "provider": "iamport", "kind": "external"},
            id="a V1 external receipt",
        ),
        pytest.param(
            None, {"receipt_key": None, "provider": None, "kind": None}, id="none readable"
        ),
    ],
)
def test_every_event_names_its_job(job: JobKey | None, named: dict[str, Any]) -> None:
    """``receipt_key``, ``provider`` and ``kind`` in every event; ``imp_uid`` only for a V1
    payment, whose consumers rely on it, and the external receipt's own id as its
    ``merchant_uid``."""
    data = event_data(
        task_id="t",
        job=job,
        merchant_uid="m-1",
        attempts=1,
        duplicate=False,
        detail={},
        occurred_at=0.0,
    )
    assert {key: data[key] for key in named} == named
    assert data["imp_uid"] == (job.imp_uid if job else None)
    assert data["merchant_uid"] == ("order:1" if job and job.kind == "external" else "m-1")


def test_an_outcome_line_names_an_external_receipt_by_its_merchant_uid() -> None:
    """Review finding F9: every outcome line carries the provider's own id of the job."""
    from worker.adapters.observe.logs import FIELDS
    from worker.core.events import external_id

    assert external_id(JobKey.external("order-7")) == {"merchant_uid": "order-7"}
    assert external_id(JobKey.payment("imp_1")) == {}
    assert external_id(JobKey.portone("pay-1", "external")) == {}
    assert {"merchant_uid", "payment_id"} <= set(FIELDS)


def test_an_id_cannot_forge_a_line_of_text() -> None:
    """Review finding F10: a merchant_uid with a newline or an escape code is shown as one
    line in the text log's outcome line and the CLI's text, its controls escaped."""
    from worker.adapters.observe.logs import outcome_line
    from worker.cli.common import job_name

    forged = "e\n[2026-12-06 21:00:00,000: INFO/MainProcess] victim: issued\x1b[2K"
    line = outcome_line(
        {"receipt_key": f"iamport-external:{forged}", "attempt": 1, "outcome": "issued"}
    )
    name = job_name(JobKey.external(forged))
    for shown in (line, name):
        assert "\n" not in shown and "\x1b" not in shown
        assert "\\x0a" in shown and "\\x1b" in shown
