"""The send time of a POST or DELETE is taken right before it goes out (pure: a fake session).

The settling lookup is made no earlier than IAMPORT_SETTLE_SECONDS after the
request was sent. A token request (up to IAMPORT_TIMEOUT) or a 401 and a
resend come between "about to send" and the send itself, so the time is
taken after the token is in hand, and again before a resend.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from tests.unit.core.test_issuing import OPERATION, request
from worker.adapters.iamport.client import TOKEN_PATH, IamportClient
from worker.core.issuing import Superseded, issue_receipt
from worker.core.ports import OperationId
from worker.core.refunds import cancel_live_receipt
from worker.core.types import JobKey

RECEIPT = {
    "imp_uid": "imp_1",
    "receipt_tid": "t",
    "apply_num": "123",
    "type": "person",
    "amount": 1000,
    "vat": 91,
    "receipt_url": None,
    "applied_at": 1,
    "cancelled_at": 0,
}


def answer(status: int, response: Any) -> requests.Response:
    """An HTTP answer in i'mport's envelope."""
    http = requests.Response()
    http.status_code = status
    code = 0 if status == 200 else -1
    http._content = json.dumps({"code": code, "message": None, "response": response}).encode()
    http.headers["Content-Type"] = "application/json"
    return http


class ScriptedSession(requests.Session):
    """Answers from a script, and writes each request into the shared ``events``."""

    def __init__(self, events: list[str], script: list[requests.Response]) -> None:
        super().__init__()
        self.events, self.script = events, script

    def request(self, method: str | bytes, url: str | bytes, *_: Any, **__: Any) -> Any:
        path = str(url).removeprefix("https://api.test")
        self.events.append("token" if path == TOKEN_PATH else f"{method!s} {path}")
        return self.script.pop(0)


class NoCache:
    """A token cache that holds nothing: every attempt fetches a token."""

    def get(self, key: str) -> str | None:
        return None

    def put(self, key: str, token: str, ttl: float) -> None:
        pass


class Sends:
    """A SendLog writing into ``events``; ``fenced`` makes ``sending`` raise Superseded."""

    def __init__(self, events: list[str], *, fenced: bool = False) -> None:
        self.events, self.fenced = events, fenced

    def sending(self) -> None:
        self.events.append("sending")
        if self.fenced:
            raise Superseded

    def answered(self) -> None:
        self.events.append("answered")


def token() -> requests.Response:
    return answer(200, {"access_token": "tok", "now": 1000, "expired_at": 2800})


def client(events: list[str], *script: requests.Response) -> IamportClient:
    return IamportClient(
        base_url="https://api.test",
        imp_key="k",
        imp_secret="s",
        session=ScriptedSession(events, list(script)),
        token_cache=NoCache(),
        timeout=1,
    )


def test_the_send_time_is_taken_after_the_token_right_before_the_post() -> None:
    events: list[str] = []
    iamport = client(events, token(), answer(200, RECEIPT))
    issue_receipt(iamport, request(), look_first=False, operation=OPERATION, sends=Sends(events))
    assert events == ["token", "sending", "POST /receipts/imp_1"]


def test_a_resend_after_a_401_takes_the_send_time_again() -> None:
    """The later send counts: the bound is waited out after the POST that may be acted on."""
    events: list[str] = []
    refused = answer(401, None)
    iamport = client(events, token(), refused, token(), answer(200, RECEIPT))
    issue_receipt(iamport, request(), look_first=False, operation=OPERATION, sends=Sends(events))
    post = "POST /receipts/imp_1"
    assert events == ["token", "sending", post, "token", "sending", post]


def test_a_delete_takes_its_send_time_after_the_token() -> None:
    events: list[str] = []
    iamport = client(events, token(), answer(200, RECEIPT), answer(200, RECEIPT))
    cancel = OperationId(job=JobKey.payment("imp_1"), step="cancel", generation=1)
    cancel_live_receipt(iamport, JobKey.payment("imp_1"), operation=cancel, sends=Sends(events))
    lookup = "GET /receipts/imp_1"
    assert events == ["token", lookup, "sending", "DELETE /receipts/imp_1"]


@pytest.mark.parametrize("refuse_first", [True, False])
def test_a_fenced_out_run_sends_nothing(refuse_first: bool) -> None:
    """Superseded from the send log stops the request: no POST leaves, the first or a resend."""
    events: list[str] = []
    if refuse_first:
        iamport = client(events, token())
        sends = Sends(events, fenced=True)
    else:
        iamport = client(events, token(), answer(401, None), token())
        sends = FencedOnResend(events)
    with pytest.raises(Superseded):
        issue_receipt(iamport, request(), look_first=False, operation=OPERATION, sends=sends)
    assert events.count("POST /receipts/imp_1") == (0 if refuse_first else 1)
    assert events[-1] == "sending"


class FencedOnResend(Sends):
    """Owns the job for the first send, not for the resend after a 401."""

    def sending(self) -> None:
        self.fenced = "sending" in self.events
        super().sending()
