"""The road every API request takes: the fault plan, the API's own checks, the work, the answer.

Both APIs the sandbox serves, i'mport (V1) and PortOne V2, go this way; what differs between them
is a `Dialect` (how an error looks, where latency strikes) and a `Call` (the request's checks,
its work, and what the audit learns from its answer).

Faults are applied here rather than in the merchant models because most of them are about the
transport (a dropped socket, a request that never gets an answer), which only the server sees.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Final, Protocol

from aiohttp import web

from iamport_sandbox.faults import FaultPlan, FaultStep
from iamport_sandbox.keys import Key
from iamport_sandbox.state import Reply

log = logging.getLogger("iamport_sandbox")

_JSON: Final = "application/json"

STATUS_MESSAGES: Final[Mapping[int, str]] = {
    500: "PG사 통신 장애로 요청을 처리하지 못했습니다. (sandbox fault)",
    502: "Bad Gateway (sandbox fault)",
    503: "Service Temporarily Unavailable (sandbox fault)",
    504: "Gateway Timeout (sandbox fault)",
}
TOO_MANY_REQUESTS: Final = "Too Many Requests (sandbox fault)"


def json_response(
    status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> web.Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(
        body=body, status=status, headers=headers, content_type=_JSON, charset="utf-8"
    )


def reason(status: int) -> str:
    """The status's own phrase, e.g. "Request Timeout", for an injected answer."""
    try:
        return f"{HTTPStatus(status).phrase} (sandbox fault)"
    except ValueError:
        return "(sandbox fault)"


def seconds_text(seconds: float) -> str:
    """HTTP wants whole seconds; a fraction is kept only when asked for, so tests run fast."""
    return str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"


ErrorReply = Callable[[int, str, "Mapping[str, str] | None"], Reply]


@dataclass(frozen=True)
class Dialect:
    """How one API answers what the sandbox injects, and where its latency falls."""

    # An error in the API's own body: i'mport's envelope, or V2's {"type", "message"}.
    error: ErrorReply
    # Injected 500-504 as the API's own error (i'mport) or as a gateway's HTML page (V2).
    gateway_pages: bool
    # Latency before the API's checks (i'mport), or after them, while the request is being
    # processed (V2: its idempotency key is then outstanding).
    delay_first: bool


class Call(Protocol):
    """One request as its API sees it."""

    key: Key
    endpoint: str
    entry: dict[str, Any]

    def admit(self) -> Reply | None:
        """The API's checks before the work: an answer that ends the request, or None."""

    def act(self, reject: FaultStep | None) -> Reply:
        """The work, with the PG's refusal when a `reject` step is due."""

    def abandon(self) -> None:
        """Admitted, but the work never ran (the server is stopping)."""

    def revoke(self) -> Reply:
        """A `revoke_tokens` step: every token dies and this request gets the API's 401."""

    def watch(self, reply: Reply) -> bool:
        """Whether `told` must learn if this answer reached the client (written explicitly)."""

    def told(self, reply: Reply | None, *, answered: bool) -> None:
        """The end of the request: the API's answer (None if none was made) and whether the
        client got it (False when dropped, hung up on, or replaced by an injected fault)."""


class Host(Protocol):
    """What the pipeline needs of the server: the current fault plan, and whether it stops."""

    faults: FaultPlan
    closing: bool


async def serve(
    host: Host, request: web.Request, dialect: Dialect, call: Call
) -> web.StreamResponse:
    """Run one request through the fault plan, the API's checks, the work and the answer."""
    entry = call.entry
    step = host.faults.pick(call.key, request.method, call.endpoint)
    kind = step.kind if step is not None else None
    entry["fault"] = kind
    delay = host.faults.delay_seconds(step)
    if dialect.delay_first and delay > 0:
        await asyncio.sleep(delay)
    if step is not None:
        early = await _early_fault(host, request, dialect, call, step)
        if early is not None:
            return early
    refusal = call.admit()
    if refusal is not None:
        call.told(refusal, answered=True)
        return finish(entry, refusal)
    try:
        if not dialect.delay_first and delay > 0:
            await asyncio.sleep(delay)
        reply = call.act(step if kind == "reject" else None)
    except BaseException:
        call.abandon()
        raise
    if kind == "drop_after":
        entry["status"] = None
        entry["outcome"] = reply.status
        log_entry(entry)
        call.told(reply, answered=False)
        return drop(request)
    if kind == "hang_after":
        assert step is not None
        entry["outcome"] = reply.status
        await hang(host, request, step.seconds)
        return await _late_answer(request, call, reply)
    response = finish(entry, reply)
    answered = True
    if call.watch(reply):
        answered = await write(request, response)
    call.told(reply, answered=answered)
    return response


async def _late_answer(request: web.Request, call: Call, reply: Reply) -> web.StreamResponse:
    """A `hang_after` answer: written now if the client is still there, else never."""
    entry = call.entry
    transport = request.transport
    if transport is None or transport.is_closing():
        log_entry(entry)
        call.told(reply, answered=False)
        return drop(request)
    response = finish(entry, reply)
    answered = await write(request, response)
    if not answered:
        entry["status"] = None
    call.told(reply, answered=answered)
    return response


async def _early_fault(
    host: Host, request: web.Request, dialect: Dialect, call: Call, step: FaultStep
) -> web.StreamResponse | None:
    """Faults that answer (or refuse to) before the request reaches the API; nothing is done."""
    entry = call.entry
    if step.kind == "revoke_tokens":
        refusal = call.revoke()
        call.told(refusal, answered=True)
        return finish(entry, refusal)
    response = await _injected(host, request, dialect, entry, step)
    if response is not None:
        call.told(None, answered=False)
    return response


async def _injected(  # noqa: PLR0911 (one answer per fault kind)
    host: Host, request: web.Request, dialect: Dialect, entry: dict[str, Any], step: FaultStep
) -> web.StreamResponse | None:
    """What the client meets in place of the API's answer, if the step is such a fault."""
    if step.kind == "drop_before":
        log_entry(entry)
        return drop(request)
    if step.kind == "hang":
        log_entry(entry)
        await hang(host, request, step.seconds)
        return drop(request)
    if step.kind == "status":
        if dialect.gateway_pages:
            return answer(entry, dialect, step.status, "html", None)
        return finish(entry, dialect.error(step.status, STATUS_MESSAGES[step.status], None))
    if step.kind == "rate_limit":
        headers = {"Retry-After": seconds_text(step.retry_after)}
        return finish(entry, dialect.error(429, TOO_MANY_REQUESTS, headers))
    if step.kind == "garbage":
        entry["status"] = step.status
        log_entry(entry)
        return web.Response(text=step.body, status=step.status, content_type="text/html")
    if step.kind == "answer":
        return answer(entry, dialect, step.status, step.body_kind, step.retry_after_header)
    return None


def answer(
    entry: dict[str, Any],
    dialect: Dialect,
    status: int,
    body_kind: str,
    retry_after: str | None,
) -> web.Response:
    """A status with the body kind asked for, and Retry-After if given; nothing is done."""
    entry["status"] = status
    log_entry(entry)
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    text = reason(status)
    if body_kind == "envelope":
        return json_response(status, dialect.error(status, text, None).body, headers)
    if body_kind == "json":
        return json_response(status, {"error": text, "status": status}, headers)
    if body_kind == "html":
        page = f"<html><body><h1>{status} {html.escape(text)}</h1></body></html>"
        return web.Response(text=page, status=status, headers=headers, content_type="text/html")
    return web.Response(body=b"", status=status, headers=headers)


async def write(request: web.Request, response: web.Response) -> bool:
    """Write an answer now; False when the client had already gone (its read timeout)."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        return False
    return True


def drop(request: web.Request) -> web.StreamResponse:
    """Close the socket with nothing written; aiohttp then skips the response it is given."""
    request.protocol.force_close()
    return web.Response()


async def hang(host: Host, request: web.Request, seconds: float) -> None:
    """Hold the request unanswered until the time is up, the client leaves, or we stop.

    Polling the transport is what frees the slot when a client times out; aiohttp does not
    cancel handlers on disconnect by default.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not host.closing:
        transport = request.transport
        remaining = deadline - loop.time()
        if transport is None or transport.is_closing() or remaining <= 0:
            return
        await asyncio.sleep(min(0.1, remaining))


def finish(entry: dict[str, Any], reply: Reply) -> web.Response:
    entry["status"] = reply.status
    log_entry(entry)
    return json_response(reply.status, reply.body, reply.headers)


def log_entry(entry: dict[str, Any]) -> None:
    if log.isEnabledFor(logging.DEBUG):
        status = entry["status"]
        if status is None:
            outcome = entry.get("outcome")
            status = "(no response)" if outcome is None else f"(no response; did {outcome})"
        log.debug(
            "%s %s -> %s fault=%s body=%s",
            entry["method"],
            entry["path"],
            status,
            entry["fault"],
            json.dumps(entry["body"], ensure_ascii=False),
        )
