"""Pieces of the admin API (/__sandbox__/) that i'mport's and PortOne V2's admin routes share."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.faults import FaultPlan, FaultStep, parse_step
from iamport_sandbox.keys import Key
from iamport_sandbox.pipeline import json_response

log = logging.getLogger("iamport_sandbox")


def error(message: str) -> web.Response:
    """Bad admin input: 400 `{"error": ...}`, and nothing changed."""
    return json_response(400, {"error": message})


async def read_json(request: web.Request) -> Any:
    """The admin body as JSON; an empty body is `{}`."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise InvalidInput("body is not valid JSON") from None


def choice(body: Any, name: str, choices: Sequence[str]) -> str:
    """The value of a body that must be exactly `{name: one of choices}`."""
    if not isinstance(body, dict) or set(body) != {name} or body[name] not in choices:
        options = "|".join(f'"{option}"' for option in choices)
        raise InvalidInput(f'body must be {{"{name}": {options}}}')
    return str(body[name])


def seconds(body: Any, name: str) -> float:
    """The number of seconds of a body `{name: N}`, N >= 0."""
    value = body.get(name) if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidInput(f'body must be {{"{name}": N}} with N >= 0')
    return float(value)


def script_steps(body: Any) -> list[FaultStep]:
    script = body.get("script") if isinstance(body, dict) else None
    if not isinstance(script, list) or not script:
        raise InvalidInput('body must be {"script": [step, ...]} with at least one step')
    return [parse_step(raw) for raw in script]


async def script(request: web.Request, plan: FaultPlan, key: Key) -> web.Response:
    """Append a `{"script": [...]}` body's steps to `key`'s script; answer with the plan."""
    try:
        steps = script_steps(await read_json(request))
    except InvalidInput as exc:
        return error(str(exc))
    plan.append(key, steps)
    log.info("admin: %d fault step(s) scripted for %s %s", len(steps), key.id_field, key.uid)
    return json_response(200, plan.to_json())


def receipt_page(fields: Mapping[str, Any]) -> web.Response:
    """What a receipt's URL points at, so a demo can follow the link."""
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in fields.items()
    )
    page = f"<!doctype html><title>현금영수증 (sandbox)</title><table>{rows}</table>"
    return web.Response(text=page, content_type="text/html")
