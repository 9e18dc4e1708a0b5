"""The sandbox as an oracle, over HTTP: duplicates it may accept, and blind requests it counts.

A blind request is a POST (DELETE) sent after the sandbox answered a lookup for that payment
showing an active receipt (none), while that answer still held. Designed paths are not blind.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import requests

from tests.sandbox.client import Api, failure, success
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.wait import wait_for


def figures(sandbox: Sandbox, imp_uid: str) -> dict[str, int]:
    """The audit's figures for one payment (zeros when it saw nothing)."""
    found: dict[str, int] = sandbox.audit()["payments"].get(imp_uid, {})
    return {
        "created": 0,
        "active": 0,
        "max_active": 0,
        "blind_posts": 0,
        "blind_deletes": 0,
        **found,
    }


def blind(sandbox: Sandbox, imp_uid: str) -> tuple[int, int]:
    found = figures(sandbox, imp_uid)
    return found["blind_posts"], found["blind_deletes"]


# -- the mode -----------------------------------------------------------------------------


def test_duplicates_refused_by_default(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """As i'mport: a second POST while a receipt is active is "already issued"."""
    success(api.issue(imp_uid))
    failure(api.issue(imp_uid), 400)
    assert sandbox.audit()["allow_duplicates"] is False
    assert figures(sandbox, imp_uid) | {"blind_posts": 0} == {
        "created": 1,
        "active": 1,
        "max_active": 1,
        "blind_posts": 0,
        "blind_deletes": 0,
    }


def test_allowed_duplicate_is_a_second_active_receipt(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """The second POST issues; lookups show the newest active one; DELETE cancels newest first."""
    sandbox.allow_duplicates()
    first = success(api.issue(imp_uid))
    second = success(api.issue(imp_uid))
    assert first["receipt_tid"] != second["receipt_tid"]
    assert success(api.lookup(imp_uid))["receipt_tid"] == second["receipt_tid"]
    audit = sandbox.audit()
    assert audit["double_active"] == [imp_uid]
    assert audit["receipts_created"] == 2
    assert figures(sandbox, imp_uid)["active"] == 2

    assert success(api.cancel(imp_uid))["receipt_tid"] == second["receipt_tid"]
    shown = success(api.lookup(imp_uid))
    assert (shown["receipt_tid"], shown["cancelled_at"]) == (first["receipt_tid"], 0)
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True
    success(api.cancel(imp_uid))
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is False
    assert figures(sandbox, imp_uid) | {"blind_posts": 0} == {
        "created": 2,
        "active": 0,
        "max_active": 2,
        "blind_posts": 0,
        "blind_deletes": 0,
    }


def test_toggle_is_checked_and_reset_restores_the_cli_mode(sandbox: Sandbox) -> None:
    """PUT takes exactly {"allow_duplicates": bool}; a reset returns to the flag's value."""
    assert sandbox.allow_duplicates()["allow_duplicates"] is True
    for body in ({}, {"allow_duplicates": "yes"}, {"allow_duplicates": True, "x": 1}, [True]):
        response = requests.put(f"{sandbox.url}/__sandbox__/audit", json=body, timeout=5)
        assert response.status_code == 400, body
    assert sandbox.audit()["allow_duplicates"] is True
    sandbox.reset()
    assert sandbox.audit()["allow_duplicates"] is False


def test_cli_flag_allows_duplicates() -> None:
    """`--allow-duplicates` starts the sandbox in the mode, and a reset keeps it."""
    with running_sandbox("--allow-duplicates") as sandbox:
        api = Api(sandbox.url, sandbox.get_token())
        success(api.issue("imp_flag"))
        success(api.issue("imp_flag"))
        sandbox.reset()
        assert sandbox.audit()["allow_duplicates"] is True


# -- blind requests -----------------------------------------------------------------------


@pytest.mark.parametrize("allow", [False, True], ids=["refusing", "allowing"])
@pytest.mark.parametrize("look", ["receipt", "payment"])
def test_post_after_a_lookup_showing_a_receipt_is_blind(
    api: Api, sandbox: Sandbox, imp_uid: str, allow: bool, look: str
) -> None:
    """Counted in both modes, whichever lookup showed the receipt, and logged as blind."""
    sandbox.allow_duplicates(allow)
    success(api.issue(imp_uid))
    shown = success(api.lookup(imp_uid) if look == "receipt" else api.payment(imp_uid))
    assert shown.get("cancelled_at", 0) == 0
    api.issue(imp_uid)
    api.issue(imp_uid)
    assert blind(sandbox, imp_uid) == (2, 0)
    assert sandbox.audit()["blind_posts"] == 2
    posts = [e for e in sandbox.requests(imp_uid) if e["method"] == "POST"]
    assert [e["blind"] for e in posts] == [False, True, True]


def test_designed_posts_are_not_blind(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """A first attempt that meets "already issued", and a POST after a lookup showing nothing."""
    success(api.issue(imp_uid))
    failure(api.issue(imp_uid), 400)  # a duplicate job's first attempt: it never looked
    other = f"{imp_uid}_b"
    failure(api.lookup(other), 404)
    assert success(api.payment(other))["cash_receipt_issued"] is False
    success(api.issue(other))
    assert blind(sandbox, imp_uid) == blind(sandbox, other) == (0, 0)


@pytest.mark.parametrize("pg", ["kicc", "settle"])
def test_a_pg_without_lookup_shows_nothing_by_its_404(
    api: Api, sandbox: Sandbox, imp_uid: str, pg: str
) -> None:
    """Its GET /receipts 404 tells nothing, so a POST after it is not blind; the payment's
    cash_receipt_issued does tell, so a POST after that is."""
    sandbox.seed_payment(imp_uid, pg_provider=pg)
    success(api.issue(imp_uid, identifier_type="phone"))
    failure(api.lookup(imp_uid), 404)
    failure(api.issue(imp_uid, identifier_type="phone"), 400)
    assert blind(sandbox, imp_uid) == (0, 0)
    assert success(api.payment(imp_uid))["cash_receipt_issued"] is True
    failure(api.issue(imp_uid, identifier_type="phone"), 400)
    assert blind(sandbox, imp_uid) == (1, 0)


@pytest.mark.parametrize("look", ["never issued", "cancelled", "payment"])
def test_delete_after_a_lookup_showing_none_is_blind(
    api: Api, sandbox: Sandbox, imp_uid: str, look: str
) -> None:
    """404 on a PG that can look, a cancelled receipt, or cash_receipt_issued false."""
    if look == "never issued":
        failure(api.lookup(imp_uid), 404)
    else:
        success(api.issue(imp_uid))
        success(api.cancel(imp_uid))
        if look == "cancelled":
            assert success(api.lookup(imp_uid))["cancelled_at"] > 0
        else:
            assert success(api.payment(imp_uid))["cash_receipt_issued"] is False
    failure(api.cancel(imp_uid), 400)
    assert blind(sandbox, imp_uid) == (0, 1)


def test_reissue_after_a_refund_is_not_blind(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """Look (active), cancel, issue again: the cancel changed what the lookup had shown."""
    success(api.issue(imp_uid))
    success(api.lookup(imp_uid))
    success(api.cancel(imp_uid))
    success(api.issue(imp_uid))
    assert blind(sandbox, imp_uid) == (0, 0)


def test_a_lookup_made_stale_by_another_client_does_not_count(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """A lookup showed none, then another client issued: a DELETE now is not blind."""
    failure(api.lookup(imp_uid), 404)
    success(api.issue(imp_uid))
    success(api.cancel(imp_uid))
    assert blind(sandbox, imp_uid) == (0, 0)


def test_a_lookup_never_answered_does_not_count(api: Api, sandbox: Sandbox, imp_uid: str) -> None:
    """The lookup ran but its answer was dropped: the client learnt nothing."""
    success(api.issue(imp_uid))
    sandbox.script(imp_uid, {"kind": "drop_after", "method": "GET"})
    with pytest.raises(requests.ConnectionError):
        api.lookup(imp_uid)
    failure(api.issue(imp_uid), 400)
    assert blind(sandbox, imp_uid) == (0, 0)


def test_a_lookup_the_client_gave_up_on_does_not_count(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """The lookup ran after the client's read timeout had closed the connection."""
    success(api.issue(imp_uid))
    sandbox.script(imp_uid, {"kind": "latency", "ms": 600, "method": "GET"})
    with pytest.raises(requests.Timeout):
        api.call("GET", f"/receipts/{imp_uid}", timeout=0.2)
    wait_for(
        lambda: all(e["status"] is not None for e in sandbox.requests(imp_uid)),
        timeout=5,
        message="the lookup to be processed",
    )
    failure(api.issue(imp_uid), 400)
    assert blind(sandbox, imp_uid) == (0, 0)


def test_only_answers_sent_before_the_request_arrived_count(
    api: Api, sandbox: Sandbox, imp_uid: str
) -> None:
    """A POST that arrives while the lookup is still unanswered is not blind; one after is."""
    success(api.issue(imp_uid))
    sandbox.script(imp_uid, {"kind": "latency", "ms": 800, "method": "GET"})
    answers: list[Any] = []
    looking = threading.Thread(target=lambda: answers.append(api.lookup(imp_uid)))
    looking.start()
    _wait_for_arrival(sandbox, imp_uid, "GET")
    failure(api.issue(imp_uid), 400)
    looking.join(timeout=5)
    success(answers[0])
    assert blind(sandbox, imp_uid) == (0, 0)
    failure(api.issue(imp_uid), 400)
    assert blind(sandbox, imp_uid) == (1, 0)


def _wait_for_arrival(sandbox: Sandbox, imp_uid: str, method: str) -> None:
    """Until the sandbox has logged the request (it logs on arrival)."""
    wait_for(
        lambda: any(e["method"] == method for e in sandbox.requests(imp_uid)),
        timeout=5,
        message=f"{method} to arrive",
    )
