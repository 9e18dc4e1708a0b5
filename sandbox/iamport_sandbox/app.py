"""HTTP face of the sandbox: i'mport's routes and the admin API; PortOne V2's beside them
(portone_http.py, under /portone).

Every API request goes through pipeline.py, where faults strike; this module says what i'mport
checks and does, and serves the admin API that stages and inspects it all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from iamport_sandbox import admin, keys, rules
from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.faults import (
    DEFAULT_HANG_SECONDS,
    DEFAULT_REJECT_MESSAGE,
    FaultPlan,
    FaultStep,
)
from iamport_sandbox.keys import Key
from iamport_sandbox.pipeline import Dialect, finish, json_response, serve
from iamport_sandbox.portone_http import PortOneConfig, PortOneServer
from iamport_sandbox.state import EXTERNAL_REISSUE_MODES, UNAUTHORIZED, Merchant, Reply, error, ok
from iamport_sandbox.tokens import AdjustableClock, TokenPolicy, TokenStore

log = logging.getLogger("iamport_sandbox")

ADMIN: Final = "/__sandbox__"
_FORMS: Final = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})

# i'mport answers every fault in its envelope, and its latency comes before the token check.
IAMPORT: Final = Dialect(error=error, gateway_pages=False, delay_first=True)


@dataclass
class SandboxConfig:
    """Startup configuration; POST /__sandbox__/reset returns to exactly this."""

    imp_key: str = "sandbox_key"
    imp_secret: str = "sandbox_secret"  # noqa: S105 - the documented sandbox default
    token_lifetime: int = 1800
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    rates: dict[str, float] = field(default_factory=dict)
    scripts: dict[str, list[FaultStep]] = field(default_factory=dict)
    seed: int | None = None
    # What rate-drawn faults carry (scripted steps carry their own).
    hang_seconds: float = DEFAULT_HANG_SECONDS
    retry_after: float = 1.0
    reject_message: str = DEFAULT_REJECT_MESSAGE
    # Accept a second POST while a receipt is active, so a double issue shows (audit.py).
    allow_duplicates: bool = False
    late_limit_seconds: float | None = None
    # Whether a merchant_uid whose external receipts are all cancelled may be issued again.
    external_reissue: str = "refuse"
    # PortOne V2, served under /portone by the same process.
    portone: PortOneConfig = field(default_factory=PortOneConfig)


class BadInput(ValueError):
    """A client body the sandbox cannot read; answered as 400, never as a crash."""


async def _read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or a form, whichever the client sent; i'mport accepts both."""
    if not request.body_exists:
        return {}
    if request.content_type in _FORMS:
        form = await request.post()
        return {key: value for key, value in form.items() if isinstance(value, str)}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadInput("요청 본문이 올바른 JSON이 아닙니다. (invalid JSON body)") from None
    if not isinstance(data, dict):
        raise BadInput("요청 본문은 JSON 객체여야 합니다. (body must be a JSON object)")
    return data


def _token_of(request: web.Request) -> str | None:
    """`Authorization` wins over the legacy header; the Bearer scheme is optional (§1.2)."""
    header = request.headers.get("Authorization")
    if header:
        scheme, _, rest = header.partition(" ")
        return rest.strip() if scheme.lower() == "bearer" and rest else header.strip()
    return request.headers.get("X-ImpTokenHeader")


Operation = Callable[[str, dict[str, Any], "str | None"], Reply]


class Sandbox:
    """All sandbox state behind one aiohttp application."""

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.clock = AdjustableClock()
        self.tokens = TokenStore(self.clock, TokenPolicy(lifetime=config.token_lifetime))
        self.merchant = Merchant(
            self.clock,
            id_seed=config.seed,
            allow_duplicates=config.allow_duplicates,
            external_reissue=config.external_reissue,
        )
        self.faults = self._startup_faults()
        self.closing = False
        self.portone = PortOneServer(
            self, self.clock, self.merchant.audit, config.portone, id_seed=config.seed
        )

    def _startup_faults(self) -> FaultPlan:
        plan = FaultPlan(self.config.seed)
        plan.latency_ms = self.config.latency_ms
        plan.latency_jitter_ms = self.config.latency_jitter_ms
        plan.rates = dict(self.config.rates)
        plan.hang_seconds = self.config.hang_seconds
        plan.retry_after = self.config.retry_after
        plan.reject_message = self.config.reject_message
        plan.late_limit_seconds = self.config.late_limit_seconds
        for imp_uid, steps in self.config.scripts.items():
            plan.append(keys.payment(imp_uid), list(steps))
        return plan

    def reset(self) -> None:
        """Back to the startup state: CLI faults and token lifetime return, data goes."""
        self.merchant.reset()
        self.merchant.audit.allow_duplicates = self.config.allow_duplicates
        self.merchant.external_reissue = self.config.external_reissue
        self.tokens = TokenStore(self.clock, TokenPolicy(lifetime=self.config.token_lifetime))
        self.clock.offset = 0.0
        self.faults = self._startup_faults()
        self.portone.reset()

    # -- i'mport API ------------------------------------------------------------------------

    async def get_token(self, request: web.Request) -> web.StreamResponse:
        entry = self._begin(request, None)
        try:
            params = await _read_body(request)
        except BadInput as exc:
            return finish(entry, error(400, str(exc)))
        entry["body"] = rules.mask_fields(params)
        key, secret = params.get("imp_key"), params.get("imp_secret")
        if not key or not secret:
            reply = error(401, "imp_key, imp_secret 파라메터가 누락되었습니다.")
        elif key != self.config.imp_key or secret != self.config.imp_secret:
            reply = error(401, "imp_key, imp_secret 인증에 실패하였습니다.")
        else:
            token, now = self.tokens.issue()
            reply = ok(
                {"access_token": token.access_token, "now": now, "expired_at": token.expired_at}
            )
        return finish(entry, reply)

    async def get_payment(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(
            request,
            _payment_key(request),
            "payments",
            lambda uid, _p, _r: self.merchant.get_payment(uid),
        )

    async def issue_receipt(self, request: web.Request) -> web.StreamResponse:
        base_url = f"{request.scheme}://{request.host}"

        def issue(imp_uid: str, params: dict[str, Any], reject: str | None) -> Reply:
            return self.merchant.issue_receipt(
                imp_uid, params, base_url=base_url, reject_message=reject
            )

        return await self._guarded(request, _payment_key(request), "receipts", issue)

    async def get_receipt(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(
            request,
            _payment_key(request),
            "receipts",
            lambda uid, _p, _r: self.merchant.get_receipt(uid),
        )

    async def cancel_receipt(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(
            request,
            _payment_key(request),
            "receipts",
            lambda uid, _p, reject: self.merchant.cancel_receipt(uid, reject_message=reject),
        )

    async def issue_external(self, request: web.Request) -> web.StreamResponse:
        base_url = f"{request.scheme}://{request.host}"

        def issue(merchant_uid: str, params: dict[str, Any], reject: str | None) -> Reply:
            return self.merchant.issue_external(
                merchant_uid, params, base_url=base_url, reject_message=reject
            )

        return await self._guarded(request, _external_key(request), "receipts", issue)

    async def get_external(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(
            request,
            _external_key(request),
            "receipts",
            lambda uid, _p, _r: self.merchant.get_external(uid),
        )

    async def cancel_external(self, request: web.Request) -> web.StreamResponse:
        return await self._guarded(
            request,
            _external_key(request),
            "receipts",
            lambda uid, _p, reject: self.merchant.cancel_external(uid, reject_message=reject),
        )

    async def _guarded(
        self, request: web.Request, key: Key, endpoint: str, operation: Operation
    ) -> web.StreamResponse:
        """Run a payment or external receipt endpoint through the pipeline: faults and audit go
        by `key`, so the two kinds never meet."""
        entry = self._begin(request, key)
        if endpoint == "receipts" and request.method in {"POST", "DELETE"}:
            # Judged on arrival: only answers written before now can have informed the client.
            entry["blind"] = self.merchant.audit.arrived(key, issuing=request.method == "POST")
        bad_body: str | None = None
        params: dict[str, Any] = {}
        if request.method == "POST":
            try:
                params = await _read_body(request)
            except BadInput as exc:
                bad_body = str(exc)
            entry["body"] = rules.mask_fields(params)
        call = _IamportCall(self, request, key, endpoint, entry, params, bad_body, operation)
        return await serve(self, request, IAMPORT, call)

    # -- request log ------------------------------------------------------------------------

    def _begin(self, request: web.Request, key: Key | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "imp_uid": None,
            "merchant_uid": None,
            "status": None,
            "body": {},
            "fault": None,
            "at": self.clock(),
        }
        if key is not None:
            entry[key.id_field] = key.uid
        self.merchant.requests.append(entry)
        return entry

    # -- admin API --------------------------------------------------------------------------

    async def admin_health(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, {"ok": True})

    async def admin_reset(self, _request: web.Request) -> web.StreamResponse:
        self.reset()
        log.info("admin: reset to startup state")
        return json_response(200, {"ok": True})

    async def admin_put_payment(self, request: web.Request) -> web.StreamResponse:
        imp_uid = request.match_info["imp_uid"]
        try:
            payment = self.merchant.seed_payment(imp_uid, await admin.read_json(request))
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: payment %s seeded", imp_uid)
        return json_response(200, payment.to_json())

    async def admin_get_payment(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.merchant.payment(request.match_info["imp_uid"]).to_json())

    async def admin_requests(self, request: web.Request) -> web.StreamResponse:
        filters = {f: request.query[f] for f in ("imp_uid", "merchant_uid") if f in request.query}
        return json_response(200, self.merchant.requests_view(filters))

    async def admin_receipts(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self.merchant.receipts_view())

    async def admin_get_audit(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self.merchant.audit.view())

    async def admin_put_audit(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await admin.read_json(request)
        except InvalidInput as exc:
            return admin.error(str(exc))
        if not isinstance(body, dict) or set(body) != {"allow_duplicates"}:
            return admin.error('body must be {"allow_duplicates": true|false}')
        allow = body["allow_duplicates"]
        if not isinstance(allow, bool):
            return admin.error('body must be {"allow_duplicates": true|false}')
        self.merchant.audit.allow_duplicates = allow
        log.info("admin: duplicates %s", "allowed" if allow else "refused")
        return json_response(200, self.merchant.audit.view())

    async def admin_get_external_reissue(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, {"external_reissue": self.merchant.external_reissue})

    async def admin_put_external_reissue(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await admin.read_json(request)
        except InvalidInput as exc:
            return admin.error(str(exc))
        try:
            mode = admin.choice(body, "external_reissue", EXTERNAL_REISSUE_MODES)
        except InvalidInput as exc:
            return admin.error(str(exc))
        self.merchant.external_reissue = mode
        log.info("admin: external re-issue after a cancel: %s", self.merchant.external_reissue)
        return json_response(200, {"external_reissue": self.merchant.external_reissue})

    async def admin_get_token(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self._token_view())

    async def admin_put_token(self, request: web.Request) -> web.StreamResponse:
        try:
            self.tokens.policy = _token_policy(await admin.read_json(request), self.tokens.policy)
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: token policy %s", self.tokens.policy)
        return json_response(200, self._token_view())

    async def admin_revoke_tokens(self, _request: web.Request) -> web.StreamResponse:
        self.tokens.revoke_all()
        log.info("admin: every token revoked")
        return json_response(200, {"ok": True})

    async def admin_get_clock(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, {"now": self.clock(), "offset_seconds": self.clock.offset})

    async def admin_advance_clock(self, request: web.Request) -> web.StreamResponse:
        try:
            seconds = admin.seconds(await admin.read_json(request), "advance_seconds")
            self.clock.advance(seconds)
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: clock advanced by %ss", seconds)
        return json_response(200, {"now": self.clock(), "offset_seconds": self.clock.offset})

    async def admin_script(self, request: web.Request) -> web.StreamResponse:
        return await admin.script(request, self.faults, _payment_key(request))

    async def admin_script_external(self, request: web.Request) -> web.StreamResponse:
        return await admin.script(request, self.faults, _external_key(request))

    async def admin_get_faults(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self.faults.to_json())

    async def admin_put_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            self.faults.configure(await admin.read_json(request))
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: fault rates %s", self.faults.rates)
        return json_response(200, self.faults.to_json())

    async def admin_clear_faults(self, _request: web.Request) -> web.StreamResponse:
        self.faults.clear()
        log.info("admin: faults cleared")
        return json_response(200, self.faults.to_json())

    async def receipt_view(self, request: web.Request) -> web.StreamResponse:
        """What `receipt_url` points at, so a demo can follow the link."""
        receipt = self.merchant.find_receipt(request.match_info["receipt_tid"])
        if receipt is None:
            raise web.HTTPNotFound(text="no such receipt")
        return admin.receipt_page(receipt.annotation())

    def _token_view(self) -> dict[str, Any]:
        policy = self.tokens.policy
        current = self.tokens.current
        return {
            "lifetime_seconds": policy.lifetime,
            "extend_window_seconds": policy.extend_window,
            "extension_seconds": policy.extension,
            "current": None
            if current is None
            else {
                "access_token": current.access_token,
                "issued_at": current.issued_at,
                "expired_at": current.expired_at,
            },
        }


@dataclass
class _IamportCall:
    """An i'mport request: its token, body and operation, and the lookups the audit hears of."""

    sandbox: Sandbox
    request: web.Request
    key: Key
    endpoint: str
    entry: dict[str, Any]
    params: dict[str, Any]
    bad_body: str | None
    operation: Operation

    def admit(self) -> Reply | None:
        if not self.sandbox.tokens.is_valid(_token_of(self.request)):
            return error(401, UNAUTHORIZED)
        if self.bad_body is not None:
            return error(400, self.bad_body)
        return None

    def act(self, reject: FaultStep | None) -> Reply:
        return self.operation(self.key.uid, self.params, None if reject is None else reject.message)

    def abandon(self) -> None:
        """Nothing was held for the work."""

    def revoke(self) -> Reply:
        self.sandbox.tokens.revoke_all()
        return error(401, UNAUTHORIZED)

    def watch(self, reply: Reply) -> bool:
        """A lookup's answer is written at once, so the audit knows whether it was told."""
        return reply.shows is not None

    def told(self, reply: Reply | None, *, answered: bool) -> None:
        """A client that gave up (its read timeout) and closed the connection was told nothing."""
        if reply is not None and reply.shows is not None and answered:
            self.sandbox.merchant.audit.answered(self.key, reply.shows)


def _payment_key(request: web.Request) -> Key:
    return keys.payment(request.match_info["imp_uid"])


def _external_key(request: web.Request) -> Key:
    return keys.external(request.match_info["merchant_uid"])


_POLICY_FIELDS: Final = {
    "lifetime_seconds": "lifetime",
    "extend_window_seconds": "extend_window",
    "extension_seconds": "extension",
}


def _token_policy(body: Any, current: TokenPolicy) -> TokenPolicy:
    """The policy an admin PUT asks for; fields left out keep their current value."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = sorted(set(body) - set(_POLICY_FIELDS))
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}")
    values: dict[str, int] = {}
    for key, attr in _POLICY_FIELDS.items():
        value = body.get(key, getattr(current, attr))
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{key} must be a whole number of seconds")
        values[attr] = value
    return TokenPolicy(**values)


SANDBOX_KEY: Final = web.AppKey("sandbox", Sandbox)


def build_app(config: SandboxConfig) -> web.Application:
    """The aiohttp application; `app[SANDBOX_KEY]` reaches the state, e.g. from tests."""
    sandbox = Sandbox(config)
    app = web.Application()
    app[SANDBOX_KEY] = sandbox
    app.router.add_post("/users/getToken", sandbox.get_token)
    app.router.add_get("/payments/{imp_uid}", sandbox.get_payment)
    app.router.add_post("/receipts/{imp_uid}", sandbox.issue_receipt)
    app.router.add_get("/receipts/{imp_uid}", sandbox.get_receipt)
    app.router.add_delete("/receipts/{imp_uid}", sandbox.cancel_receipt)
    app.router.add_post("/receipts/external/{merchant_uid}", sandbox.issue_external)
    app.router.add_get("/receipts/external/{merchant_uid}", sandbox.get_external)
    app.router.add_delete("/receipts/external/{merchant_uid}", sandbox.cancel_external)

    app.router.add_get(f"{ADMIN}/health", sandbox.admin_health)
    app.router.add_post(f"{ADMIN}/reset", sandbox.admin_reset)
    app.router.add_put(f"{ADMIN}/payments/{{imp_uid}}", sandbox.admin_put_payment)
    app.router.add_get(f"{ADMIN}/payments/{{imp_uid}}", sandbox.admin_get_payment)
    app.router.add_get(f"{ADMIN}/requests", sandbox.admin_requests)
    app.router.add_get(f"{ADMIN}/receipts", sandbox.admin_receipts)
    app.router.add_get(f"{ADMIN}/audit", sandbox.admin_get_audit)
    app.router.add_put(f"{ADMIN}/audit", sandbox.admin_put_audit)
    app.router.add_get(f"{ADMIN}/token", sandbox.admin_get_token)
    app.router.add_put(f"{ADMIN}/token", sandbox.admin_put_token)
    app.router.add_post(f"{ADMIN}/tokens/revoke", sandbox.admin_revoke_tokens)
    app.router.add_get(f"{ADMIN}/clock", sandbox.admin_get_clock)
    app.router.add_post(f"{ADMIN}/clock", sandbox.admin_advance_clock)
    app.router.add_get(f"{ADMIN}/faults", sandbox.admin_get_faults)
    app.router.add_put(f"{ADMIN}/faults", sandbox.admin_put_faults)
    app.router.add_delete(f"{ADMIN}/faults", sandbox.admin_clear_faults)
    app.router.add_post(f"{ADMIN}/faults/{{imp_uid}}", sandbox.admin_script)
    app.router.add_post(f"{ADMIN}/external/faults/{{merchant_uid}}", sandbox.admin_script_external)
    app.router.add_get(f"{ADMIN}/external/reissue", sandbox.admin_get_external_reissue)
    app.router.add_put(f"{ADMIN}/external/reissue", sandbox.admin_put_external_reissue)
    app.router.add_get(f"{ADMIN}/receipt-view/{{receipt_tid}}", sandbox.receipt_view)
    sandbox.portone.add_routes(app.router)
    return app
