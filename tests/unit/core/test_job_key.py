"""A job's key: one name per job, whatever the provider and kind."""

from __future__ import annotations

import pytest

from worker.core.types import JobKey


@pytest.mark.parametrize(
    ("job", "receipt_key"),
    [
        (JobKey.payment("x"), "iamport:x"),
        (JobKey.external("x"), "iamport-external:x"),
        (JobKey.portone("x"), "portone:x"),
        (JobKey.portone("x", "external"), "portone:x"),
    ],
)
def test_receipt_keys(job: JobKey, receipt_key: str) -> None:
    assert job.receipt_key == receipt_key


def test_v1_kinds_are_two_jobs_v2_kinds_one() -> None:
    """V1 names a payment's receipt and an external one on two paths; V2 names both by
    the paymentId the merchant chose: one receipt to PortOne, so one job."""
    assert JobKey.payment("x") != JobKey.external("x")
    assert JobKey.portone("x") == JobKey.portone("x", "external")
    assert len({JobKey.portone("x"), JobKey.portone("x", "external")}) == 1
    assert JobKey.portone("x") != JobKey.payment("x")
    assert JobKey.portone("x").imp_uid is None


def test_a_v2_receipt_key_names_its_job() -> None:
    assert JobKey.parse("portone:pay-1") == JobKey.portone("pay-1")
    assert JobKey.parse("portone:") == JobKey.portone("")
