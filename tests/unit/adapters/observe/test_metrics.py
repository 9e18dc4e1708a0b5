"""Which counter a task's outcome moves: the table behind the metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from worker.adapters.observe.metrics import Metrics
from worker.core.outcome import Outcome
from worker.core.types import JobKey

#: The labels of a V1 payment's job, with which each expected count below starts.
PAYMENT = {"provider": "iamport", "kind": "payment"}


@pytest.mark.parametrize(
    ("task", "outcome", "reason", "expected"),
    [
        ("issue", "issued", None, [("cashreceipt_receipts_issued_total", {})]),
        ("issue", "issued:duplicate", None,
         [("cashreceipt_duplicates_absorbed_total", {"task": "issue"})]),
        ("issue", "done", None, [("cashreceipt_duplicates_absorbed_total", {"task": "issue"})]),
        ("issue", "failed", "rejected",
         [("cashreceipt_receipts_failed_total", {"reason": "rejected"})]),
        ("issue", "retry", "rate_limited",
         [("cashreceipt_retries_total",
           {"task": "issue", "cause": "rate_limited", "how": "countdown"})]),
        ("issue", "parked", "provider_unavailable",
         [("cashreceipt_retries_total",
           {"task": "issue", "cause": "provider_unavailable", "how": "parked"})]),
        ("issue", "error", "KeyError", [("cashreceipt_task_errors_total", {"task": "issue"})]),
        ("cancel", "cancelled", None, [("cashreceipt_receipts_cancelled_total", {})]),
        ("cancel", "cancelled:duplicate", None,
         [("cashreceipt_duplicates_absorbed_total", {"task": "cancel"})]),
        ("cancel", "cancelled:reissued", None,
         [("cashreceipt_receipts_cancelled_total", {}),
          ("cashreceipt_receipts_issued_total", {})]),
        ("cancel", "cancelled:reissue_failed", "not_eligible",
         [("cashreceipt_receipts_cancelled_total", {}),
          ("cashreceipt_receipts_failed_total", {"reason": "not_eligible"})]),
        ("cancel", "failed", "unsupported_pg",
         [("cashreceipt_cancellations_failed_total", {"reason": "unsupported_pg"})]),
    ],
)  # fmt: skip
def test_an_outcome_moves_its_counters_and_no_other(
    task: str, outcome: str, reason: str | None, expected: list[tuple[str, dict[str, str]]]
) -> None:
    """Each outcome adds one to exactly the counters it names, labelled with its job's
    provider and kind."""
    registry = CollectorRegistry()
    Metrics(registry).task_ended(
        job=JobKey.payment("imp_1"), task=task, outcome=Outcome(outcome), reason=reason
    )
    assert moved(registry) == {
        (name, tuple(sorted({**PAYMENT, **labels}.items()))) for name, labels in expected
    }


def moved(registry: CollectorRegistry) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    """The counters above zero, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in registry.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.value
    }


@pytest.mark.parametrize(
    ("job", "labels"),
    [
        (JobKey.external("order-7"), {"provider": "iamport", "kind": "external"}),
        (JobKey.payment("order-7"), PAYMENT),
        # A payload that named no job it could read: bounded, and said.
        (None, {"provider": "unknown", "kind": "unknown"}),
    ],
)
def test_every_count_about_a_job_names_its_provider_and_kind(
    job: JobKey | None, labels: dict[str, str]
) -> None:
    """Issued, failed, a retry, a duplicate, an error, a late receipt, a sweeper's re-send:
    each labelled with the job's provider and kind, never its id."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for outcome, reason in (("issued", None), ("failed", "id_conflict"), ("retry", "busy"),
                            ("done", None), ("error", "KeyError")):  # fmt: skip
        metrics.task_ended(job=job, task="issue", outcome=Outcome(outcome), reason=reason)
    metrics.late_processing(job)
    if job is not None:
        metrics.jobs_resent([job, job])
    counted = {name: dict(found) for name, found in moved(registry)}
    assert all(
        {key: found[key] for key in ("provider", "kind")} == labels for found in counted.values()
    )
    assert "order-7" not in str(counted)
    assert set(counted) == {
        "cashreceipt_receipts_issued_total",
        "cashreceipt_receipts_failed_total",
        "cashreceipt_retries_total",
        "cashreceipt_duplicates_absorbed_total",
        "cashreceipt_task_errors_total",
        "cashreceipt_late_processing_detected_total",
        *(["cashreceipt_sweeper_resent_jobs_total"] if job is not None else []),
    }
    if job is not None:
        resent = registry.get_sample_value("cashreceipt_sweeper_resent_jobs_total", labels)
        assert resent == 2


def test_latency_is_observed_by_endpoint_without_the_imp_uid() -> None:
    """The i'mport client reports each request; the labels are bounded."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.observe_iamport("POST", "receipts", "200", 0.03)
    metrics.observe_iamport("POST", "receipts", "none", 10.0)
    count = "cashreceipt_iamport_request_duration_seconds_count"
    labels = {"method": "POST", "endpoint": "receipts"}
    assert registry.get_sample_value(count, {**labels, "status": "200"}) == 1
    assert registry.get_sample_value(count, {**labels, "status": "none"}) == 1
    bucket = "cashreceipt_iamport_request_duration_seconds_bucket"
    assert registry.get_sample_value(bucket, {**labels, "status": "200", "le": "0.05"}) == 1
