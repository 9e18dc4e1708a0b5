"""The admin API's read-back: request log, receipts, counts, token and clock, reset."""

from __future__ import annotations

import requests

from tests.sandbox.client import Api, failure, success
from tests.support.sandbox import Sandbox


def test_health(sandbox: Sandbox) -> None:
    """GET /__sandbox__/health is {"ok": true}."""
    response = requests.get(f"{sandbox.url}/__sandbox__/health", timeout=5)
    assert (response.status_code, response.json()) == (200, {"ok": True})


def test_request_log_masks_identifiers(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """Every API request is logged, oldest first, with identifier and buyer_tel masked."""
    success(api.issue(imp_uid, identifier="01012345678", buyer_tel="01098765432"))
    failure(api.issue(imp_uid, identifier="01012345678"), 400)
    success(api.lookup(imp_uid))
    entries = sandbox.requests(imp_uid)
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", f"/receipts/{imp_uid}", 200),
        ("POST", f"/receipts/{imp_uid}", 400),
        ("GET", f"/receipts/{imp_uid}", 200),
    ]
    first = entries[0]
    assert set(first) >= {"method", "path", "imp_uid", "status", "body", "at"}
    assert first["imp_uid"] == imp_uid
    assert first["body"]["identifier"] == "010****5678"
    assert first["body"]["buyer_tel"] == "010****5432"
    assert "01012345678" not in str(sandbox.requests())


def test_request_log_hides_the_secret(sandbox: Sandbox) -> None:
    """getToken is logged with imp_secret hidden."""
    sandbox.get_token()
    (entry,) = sandbox.requests()
    assert entry["path"] == "/users/getToken"
    assert entry["body"]["imp_secret"] == "***"


def test_receipts_and_counts(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """Every receipt ever made, cancelled ones included, and successful issues per imp_uid."""
    success(api.issue(imp_uid))
    success(api.cancel(imp_uid))
    success(api.issue(imp_uid))
    other = f"{imp_uid}_b"
    success(api.issue(other))
    view = sandbox.receipts()
    assert view["issued_counts"] == {imp_uid: 2, other: 1}
    assert [r["imp_uid"] for r in view["receipts"]] == [imp_uid, imp_uid, other]
    assert view["receipts"][0]["cancelled_at"] > 0
    assert view["receipts"][0]["pg_provider"] == "html5_inicis"
    assert sandbox.issued_count("imp_never") == 0


def test_seed_payment_updates_in_place(sandbox: Sandbox, imp_uid: str) -> None:
    """PUT creates then updates; fields not sent keep their value."""
    created = sandbox.seed_payment(imp_uid, amount=50000, pg_provider="kcp")
    assert (created["amount"], created["pg_provider"], created["status"]) == (50000, "kcp", "paid")
    updated = sandbox.seed_payment(imp_uid, cancel_amount=20000, status="ready")
    assert (updated["amount"], updated["cancel_amount"], updated["status"]) == (
        50000,
        20000,
        "ready",
    )
    assert updated["paid_at"] == 0


def test_seeded_cash_receipt_issued_flag(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A PG auto-issued receipt can be simulated by seeding cash_receipt_issued."""
    sandbox.seed_payment(imp_uid, cash_receipt_issued=True)
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True


def test_token_view_and_policy(sandbox: Sandbox) -> None:
    """PUT /token changes the policy for tokens minted next; GET shows it and the token."""
    view = sandbox.set_token_lifetime(5, extend_window_seconds=2, extension_seconds=10)
    assert (view["lifetime_seconds"], view["extend_window_seconds"]) == (5, 2)
    assert view["extension_seconds"] == 10
    token = sandbox.get_token()
    current = sandbox.token()["current"]
    assert current["access_token"] == token
    assert current["expired_at"] - current["issued_at"] == 5


def test_reset_forgets_everything_but_startup_config(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """Reset clears payments, receipts, external receipts, requests, faults, tokens and the clock
    offset, and returns the external re-issue mode to the CLI's."""
    sandbox.seed_payment(imp_uid, amount=99000)
    success(api.issue(imp_uid))
    success(api.issue_external(imp_uid))
    sandbox.script(imp_uid, {"kind": "status", "status": 503})
    sandbox.script_external(imp_uid, {"kind": "status", "status": 503})
    sandbox.set_external_reissue("allow")
    sandbox.set_rates(rates={"hang": 0.5}, latency_ms=5, reject_message="x", hang_seconds=1)
    sandbox.set_token_lifetime(3)
    sandbox.advance_clock(60)
    sandbox.reset()
    assert sandbox.requests() == []
    assert sandbox.receipts() == {
        "receipts": [],
        "issued_counts": {},
        "external_receipts": [],
        "external_issued_counts": {},
    }
    assert sandbox.audit()["external"]["merchant_uids"] == {}
    assert sandbox.external_reissue() == "refuse"
    faults = sandbox.faults()
    assert (faults["scripts"], faults["external_scripts"]) == ({}, {})
    assert set(faults["rates"].values()) == {0.0}
    assert faults["latency_ms"] == 0
    assert (faults["reject_message"], faults["hang_seconds"]) != ("x", 1)
    assert sandbox.token() == {
        "lifetime_seconds": 1800,
        "extend_window_seconds": 60,
        "extension_seconds": 300,
        "current": None,
    }
    failure(api.payment(imp_uid), 401)
    assert success(Api(sandbox.url, sandbox.get_token()).payment(imp_uid))["amount"] == 11000


def test_receipt_ids_stay_unique_across_resets(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """receipt_tid is never reused within one process, even after a reset."""
    first = success(api.issue(imp_uid))["receipt_tid"]
    sandbox.reset()
    second = success(Api(sandbox.url, sandbox.get_token()).issue(imp_uid))["receipt_tid"]
    assert first != second


def test_receipt_view_of_an_unknown_receipt_is_404(sandbox: Sandbox) -> None:
    """receipt_url pages exist only for receipts that were issued."""
    response = requests.get(f"{sandbox.url}/__sandbox__/receipt-view/SBX-RCT-nope", timeout=5)
    assert response.status_code == 404
