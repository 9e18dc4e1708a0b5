"""HTTP face of PortOne V2: its cash-receipt routes under /portone, and their admin API.

V2's `/payments/{paymentId}` would meet i'mport's `/payments/{imp_uid}`, so V2 is served under
the prefix `/portone`: a V2 client's base URL (PORTONE_API_URL) is `http://HOST:PORT/portone`,
and below it the paths are the OpenAPI file's, exactly. Every request but the login goes through
pipeline.py, so every fault i'mport's routes meet strikes here too, per paymentId.

Authentication is `Authorization: PortOne <API secret>` (or `Bearer <accessToken>` from
POST /login/api-secret), as the OpenAPI file's two security schemes say; anything else is 401.
A POST may carry an `Idempotency-Key` (idempotency.py), which is checked after the request's own
checks and before its work, so a key never stores an answer to a request that was refused as
malformed, unauthorized or forbidden.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from iamport_sandbox import admin, keys, rules
from iamport_sandbox.audit import Audit
from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.faults import FaultStep
from iamport_sandbox.idempotency import (
    DEFAULT_RETENTION_SECONDS,
    HEADER,
    NEW,
    OUTSTANDING,
    REPLAYED,
    IdempotencyStore,
    KeyFormatError,
    Record,
    fingerprint,
    parse_header,
)
from iamport_sandbox.keys import Key
from iamport_sandbox.pipeline import Dialect, Host, finish, json_response, serve
from iamport_sandbox.portone import LOOKUP_MODES, REISSUE_MODES, PortOne
from iamport_sandbox.portone_input import (
    parse_issue,
    parse_list,
    parse_login,
    payment_id_of,
    read_json,
)
from iamport_sandbox.portone_rules import Failure, failure, fault_error, masked_headers
from iamport_sandbox.state import Reply
from iamport_sandbox.tokens import Clock

log = logging.getLogger("iamport_sandbox")

PREFIX: Final = "/portone"
ADMIN: Final = "/__sandbox__/portone"
DEFAULT_SECRET: Final = "sandbox_portone_secret"  # noqa: S105 - the documented sandbox default
DEFAULT_STORE_ID: Final = "store-sandbox"
DEFAULT_CHANNEL_KEY: Final = "channel-key-sandbox"
# LoginViaApiSecretResponse: "30분의 유효기간".
ACCESS_TOKEN_SECONDS: Final = 1800
# V2 answers in its own JSON; a 5xx the sandbox injects comes from a gateway in front of it, as an
# HTML page; latency falls while the request is processed, its Idempotency-Key outstanding.
PORTONE: Final = Dialect(error=fault_error, gateway_pages=True, delay_first=False)

UNAUTHORIZED: Final = "인증 정보가 올바르지 않습니다. (Authorization: PortOne <API secret>)"


@dataclass(frozen=True)
class PortOneConfig:
    """V2's startup configuration; a reset returns to it."""

    secret: str = DEFAULT_SECRET
    store_id: str = DEFAULT_STORE_ID
    channel_keys: tuple[str, ...] = (DEFAULT_CHANNEL_KEY,)
    reissue: str = "refuse"
    lookup: str = "issued_first"
    idempotency_retention: float = DEFAULT_RETENTION_SECONDS


Work = Callable[[FaultStep | None], Reply]


class PortOneServer:
    """The V2 routes and their state, served by the sandbox process beside i'mport's."""

    def __init__(
        self,
        host: Host,
        clock: Clock,
        audit: Audit,
        config: PortOneConfig,
        *,
        id_seed: int | None = None,
    ) -> None:
        self.host = host
        self.clock = clock
        self.config = config
        self.model = PortOne(
            clock,
            audit,
            store_id=config.store_id,
            channel_keys=config.channel_keys,
            reissue=config.reissue,
            lookup=config.lookup,
            id_seed=id_seed,
        )
        self.idempotency = IdempotencyStore(clock, config.idempotency_retention)
        self.access_tokens: dict[str, float] = {}

    def reset(self) -> None:
        self.model.reset()
        self.model.reissue = self.config.reissue
        self.model.lookup_mode = self.config.lookup
        self.idempotency.clear()
        self.idempotency.retention_seconds = self.config.idempotency_retention
        self.access_tokens.clear()

    def authorized(self, header: str | None) -> bool:
        """`PortOne <secret>` exactly, or `Bearer <accessToken>` still within its 30 minutes."""
        if header is None:
            return False
        if header == f"PortOne {self.config.secret}":
            return True
        scheme, _, token = header.partition(" ")
        expires = self.access_tokens.get(token) if scheme == "Bearer" else None
        return expires is not None and self.clock() < expires

    # -- V2 API -------------------------------------------------------------------------------

    async def issue(self, request: web.Request) -> web.StreamResponse:
        """POST /cash-receipts: faults and audit go by the body's paymentId."""
        entry = self._begin(request)
        raw = await request.read()
        parsed: Any = None
        refusal: Reply | None = None
        try:
            parsed = read_json(raw)
        except Failure as bad:
            refusal = bad.reply()
        payment_id = payment_id_of(parsed)
        entry["paymentId"] = payment_id
        entry["body"] = rules.mask_fields(parsed) if isinstance(parsed, dict) else {}
        body = None
        if refusal is None:
            try:
                body = parse_issue(parsed)
                self.model.check_store(body.store_id)
            except Failure as bad:
                refusal = bad.reply()
        base_url = f"{request.scheme}://{request.host}"

        def work(reject: FaultStep | None) -> Reply:
            assert body is not None
            return self.model.issue(body, base_url=base_url, request=entry["body"], reject=reject)

        post = None if payment_id is None else self._judge_post(request, entry)
        return await self._serve(request, entry, raw, "receipts", work, refusal=refusal, post=post)

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        """GET /payments/{paymentId}/cash-receipt."""
        payment_id = request.match_info["paymentId"]
        return await self._by_payment_id(
            request, payment_id, "receipts", lambda _r: self.model.lookup(payment_id)
        )

    async def cancel(self, request: web.Request) -> web.StreamResponse:
        """POST /payments/{paymentId}/cash-receipt/cancel: no body; `storeId` in the query."""
        payment_id = request.match_info["paymentId"]
        return await self._by_payment_id(
            request, payment_id, "cancel", lambda reject: self.model.cancel(payment_id, reject)
        )

    async def get_payment(self, request: web.Request) -> web.StreamResponse:
        """GET /payments/{paymentId}."""
        payment_id = request.match_info["paymentId"]
        return await self._by_payment_id(
            request, payment_id, "payments", lambda _r: self.model.get_payment(payment_id)
        )

    async def _by_payment_id(
        self, request: web.Request, payment_id: str, endpoint: str, work: Work
    ) -> web.StreamResponse:
        entry = self._begin(request)
        entry["paymentId"] = payment_id
        raw = await request.read()
        store_id = request.query.get("storeId")

        refusal = None
        try:
            self.model.check_store(store_id)
        except Failure as bad:
            refusal = bad.reply()
        if endpoint == "cancel":
            # Judged on arrival, as i'mport's DELETE: blind after a lookup showed none.
            blind = self.model.audit.arrived(keys.portone(payment_id), issuing=False)
            entry["blind"] = blind
            entry["blind_reasons"] = ["shown_not_issued"] if blind else []
        return await self._serve(request, entry, raw, endpoint, work, refusal=refusal)

    async def list_receipts(self, request: web.Request) -> web.StreamResponse:
        """GET /cash-receipts: the body as the `requestBody` query parameter (URL-encoded
        JSON) or, for clients that can, as a GET body; the parameter wins when both come."""
        entry = self._begin(request)
        raw = await request.read()
        text = request.query.get("requestBody")
        parsed: Any = None
        refusal: Reply | None = None
        try:
            if text is not None:
                parsed = read_json(text, "requestBody")
            elif raw.strip():
                parsed = read_json(raw)
            query = parse_list(parsed)
            self.model.check_store(query.store_id)
        except Failure as bad:
            query, refusal = None, bad.reply()
        entry["body"] = rules.mask_fields(parsed) if isinstance(parsed, dict) else {}
        payment_id = None if query is None else query.payment_id
        entry["paymentId"] = payment_id

        def work(_reject: FaultStep | None) -> Reply:
            assert query is not None
            return self.model.list(query)

        return await self._serve(request, entry, raw, "receipts", work, refusal=refusal)

    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST /login/api-secret: an access token good for 30 minutes on the sandbox clock.
        Like i'mport's getToken, it meets no fault."""
        entry = self._begin(request)
        try:
            parsed = read_json(await request.read())
            entry["body"] = rules.mask_fields(parsed) if isinstance(parsed, dict) else {}
            secret = parse_login(parsed)
        except Failure as bad:
            reply = bad.reply()
        else:
            if secret != self.config.secret:
                reply = failure("UNAUTHORIZED", "API secret이 올바르지 않습니다.")
            else:
                token = secrets.token_urlsafe(32)
                self.access_tokens[token] = self.clock() + ACCESS_TOKEN_SECONDS
                reply = Reply(
                    200, {"accessToken": token, "refreshToken": secrets.token_urlsafe(32)}
                )
        entry["done"] = True
        return finish(entry, reply)

    # -- the request's way through ----------------------------------------------------------

    def _begin(self, request: web.Request) -> dict[str, Any]:
        """The request log entry, made on arrival; the secret never reaches it."""
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "paymentId": None,
            "status": None,
            "outcome": None,
            "body": {},
            "headers": masked_headers(request.headers),
            "idempotency_key": request.headers.get(HEADER),
            "idempotency": None,
            "fault": None,
            "at": self.clock(),
            "done": False,
        }
        self.model.requests.append(entry)
        return entry

    async def _serve(
        self,
        request: web.Request,
        entry: dict[str, Any],
        raw: bytes,
        endpoint: str,
        work: Work,
        *,
        refusal: Reply | None,
        post: int | None = None,
    ) -> web.StreamResponse:
        """Through the pipeline, by the entry's paymentId; `refusal` is the answer of the
        request's own checks (body, store), given once authentication has passed."""
        # An unfiltered list or a body without a paymentId meets rates only: no script has "".
        key = keys.portone(entry["paymentId"] or "")
        call = _V2Call(self, request, key, endpoint, entry, raw, refusal, work, post=post)
        return await serve(self.host, request, PORTONE, call)

    def _judge_post(self, request: web.Request, entry: dict[str, Any]) -> int:
        """A POST to issue, judged on arrival: blind after a lookup showed a receipt ISSUED, or
        after an unanswered POST with no lookup since and not under that POST's key."""
        audit = self.model.audit
        key = keys.portone(entry["paymentId"])
        try:
            idempotency_key = parse_header(request.headers.getall(HEADER, []))
        except KeyFormatError:
            idempotency_key = None
        shown = audit.arrived(key, issuing=True)
        ticket, retry = audit.post_arrived(key, idempotency_key, blind=shown)
        reasons = [
            name for name, hit in (("shown_issued", shown), ("unanswered_post", retry)) if hit
        ]
        entry["blind"] = bool(reasons)
        entry["blind_reasons"] = reasons
        return ticket

    # -- admin API --------------------------------------------------------------------------

    async def admin_put_payment(self, request: web.Request) -> web.StreamResponse:
        payment_id = request.match_info["paymentId"]
        base_url = f"{request.scheme}://{request.host}"
        try:
            fields = await admin.read_json(request)
            payment = self.model.seed_payment(payment_id, fields, base_url=base_url)
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: V2 payment %s seeded", payment_id)
        return json_response(200, payment)

    async def admin_get_payment(self, request: web.Request) -> web.StreamResponse:
        reply = self.model.get_payment(request.match_info["paymentId"])
        if reply.status != 200:
            return json_response(404, {"error": "no such payment; PUT one first"})
        return json_response(200, reply.body)

    async def admin_requests(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.model.requests_view(request.query.get("paymentId")))

    async def admin_receipts(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self.model.receipts_view())

    async def admin_script(self, request: web.Request) -> web.StreamResponse:
        key = keys.portone(request.match_info["paymentId"])
        return await admin.script(request, self.host.faults, key)

    async def admin_get_reissue(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, {"reissue": self.model.reissue})

    async def admin_put_reissue(self, request: web.Request) -> web.StreamResponse:
        try:
            self.model.reissue = admin.choice(
                await admin.read_json(request), "reissue", REISSUE_MODES
            )
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info("admin: V2 re-issue after a cancel: %s", self.model.reissue)
        return json_response(200, {"reissue": self.model.reissue})

    async def admin_get_lookup(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, {"lookup": self.model.lookup_mode})

    async def admin_put_lookup(self, request: web.Request) -> web.StreamResponse:
        try:
            self.model.lookup_mode = admin.choice(
                await admin.read_json(request), "lookup", LOOKUP_MODES
            )
        except InvalidInput as exc:
            return admin.error(str(exc))
        log.info(
            "admin: V2 lookup of a paymentId with several receipts: %s", self.model.lookup_mode
        )
        return json_response(200, {"lookup": self.model.lookup_mode})

    async def admin_get_idempotency(self, _request: web.Request) -> web.StreamResponse:
        return json_response(200, self.idempotency.view())

    async def admin_put_idempotency(self, request: web.Request) -> web.StreamResponse:
        try:
            seconds = admin.seconds(await admin.read_json(request), "retention_seconds")
        except InvalidInput as exc:
            return admin.error(str(exc))
        self.idempotency.retention_seconds = seconds
        log.info("admin: idempotency keys kept %ss", seconds)
        return json_response(200, self.idempotency.view())

    async def receipt_view(self, request: web.Request) -> web.StreamResponse:
        receipt = self.model.find_receipt(request.match_info["pgReceiptId"])
        if receipt is None:
            raise web.HTTPNotFound(text="no such receipt")
        return admin.receipt_page(receipt.to_json(self.model.store_id))

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(f"{PREFIX}/login/api-secret", self.login)
        router.add_post(f"{PREFIX}/cash-receipts", self.issue)
        router.add_get(f"{PREFIX}/cash-receipts", self.list_receipts)
        router.add_get(f"{PREFIX}/payments/{{paymentId}}", self.get_payment)
        router.add_get(f"{PREFIX}/payments/{{paymentId}}/cash-receipt", self.lookup)
        router.add_post(f"{PREFIX}/payments/{{paymentId}}/cash-receipt/cancel", self.cancel)

        router.add_put(f"{ADMIN}/payments/{{paymentId}}", self.admin_put_payment)
        router.add_get(f"{ADMIN}/payments/{{paymentId}}", self.admin_get_payment)
        router.add_get(f"{ADMIN}/requests", self.admin_requests)
        router.add_get(f"{ADMIN}/receipts", self.admin_receipts)
        router.add_post(f"{ADMIN}/faults/{{paymentId}}", self.admin_script)
        router.add_get(f"{ADMIN}/reissue", self.admin_get_reissue)
        router.add_put(f"{ADMIN}/reissue", self.admin_put_reissue)
        router.add_get(f"{ADMIN}/lookup", self.admin_get_lookup)
        router.add_put(f"{ADMIN}/lookup", self.admin_put_lookup)
        router.add_get(f"{ADMIN}/idempotency", self.admin_get_idempotency)
        router.add_put(f"{ADMIN}/idempotency", self.admin_put_idempotency)
        router.add_get(f"{ADMIN}/receipt-view/{{pgReceiptId}}", self.receipt_view)


@dataclass
class _V2Call:
    """A V2 request: authentication, its own checks, its Idempotency-Key, its work, and what
    the audit learns from its answer."""

    server: PortOneServer
    request: web.Request
    key: Key
    endpoint: str
    entry: dict[str, Any]
    raw: bytes
    # What the request's own checks (body, store) answer, if they refuse it.
    refusal: Reply | None
    work: Work
    # The audit's ticket of a POST to issue (audit.post_arrived).
    post: int | None = None
    record: Record | None = None
    # Whether the answer is its request's outcome: the work's, or a stored one replayed.
    settled: bool = False

    def admit(self) -> Reply | None:
        if not self.server.authorized(self.request.headers.get("Authorization")):
            return failure("UNAUTHORIZED", UNAUTHORIZED)
        idempotency_key = None
        if self.request.method != "GET":  # PortOne ignores the header on GET
            try:
                idempotency_key = parse_header(self.request.headers.getall(HEADER, []))
            except KeyFormatError as exc:
                self.entry["idempotency"] = "invalid"
                return failure("INVALID_REQUEST", str(exc))
        if self.refusal is not None or idempotency_key is None:
            return self.refusal
        return self._claim(idempotency_key)

    def _claim(self, idempotency_key: str) -> Reply | None:
        """Hold the key for this request (None: go on), or answer from it."""
        url = self.request.rel_url
        claim = self.server.idempotency.claim(
            idempotency_key,
            fingerprint(self.request.method, url.raw_path, url.raw_query_string, self.raw),
        )
        self.entry["idempotency"] = claim.state
        if claim.state == NEW:
            self.record = claim.record
            return None
        if claim.state == REPLAYED:
            self.settled = True
            assert claim.record.reply is not None
            return claim.record.reply
        if claim.state == OUTSTANDING:
            return failure(
                "IDEMPOTENCY_OUTSTANDING_REQUEST",
                "같은 멱등 키의 요청이 아직 처리 중입니다. 잠시 후 다시 시도해 주세요.",
            )
        return failure(
            "IDEMPOTENCY_KEY_REUSED",
            "이 멱등 키는 다른 요청에 쓰였습니다. (Idempotency-Key reused for another request)",
        )

    def act(self, reject: FaultStep | None) -> Reply:
        reply = self.work(reject)
        self.entry["outcome"] = reply.status
        self.settled = True
        if self.record is not None:
            self.server.idempotency.complete(self.record, reply)
        return reply

    def abandon(self) -> None:
        if self.record is not None:
            self.server.idempotency.release(self.record)

    def revoke(self) -> Reply:
        """No secret can be revoked by a fault; the access tokens of logins are."""
        self.server.access_tokens.clear()
        return failure("UNAUTHORIZED", UNAUTHORIZED)

    def watch(self, reply: Reply) -> bool:
        """Lookups, and POSTs to issue: the audit must know whether their answers arrived."""
        return reply.shows is not None or self.post is not None

    def told(self, reply: Reply | None, *, answered: bool) -> None:
        self.entry["done"] = True
        audit = self.server.model.audit
        if reply is not None and reply.shows is not None and answered:
            audit.answered(self.key, reply.shows)
        if self.post is not None:
            audit.post_told(
                self.key, self.post, answered=answered, settled=answered and self.settled
            )
