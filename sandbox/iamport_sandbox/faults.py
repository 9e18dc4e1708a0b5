"""Which failure, if any, the next request meets.

Faults come from two places. A script per imp_uid (or per external receipt's merchant_uid, or per
PortOne V2 paymentId) lets a test stage an exact sequence ("503, then drop after creating, then
succeed"); global rates let a benchmark or soak run meet failures at random, reproducibly with a
seed. A scripted step wins over the rates, so a test that scripts an imp_uid is never disturbed by
rates set for a load run. The external receipt routes and V2's cash-receipt routes are `receipts`
requests like the payment ones, so every kind and rate applies to them too; V2's cancel, a POST,
is told from its issue by the endpoint `cancel`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from iamport_sandbox.errors import InvalidInput
from iamport_sandbox.keys import EXTERNAL, PAYMENT, PORTONE, Key

STEP_KINDS: Final = (
    "latency",
    "status",
    "rate_limit",
    "drop_before",
    "drop_after",
    "hang",
    "revoke_tokens",
    "reject",
    "garbage",
    "answer",
    "hang_after",
)

# Rate names in the order they are drawn for a request; the first that fires is the fault.
# Cheap, "nothing happened" faults come before the ones that act, and drop_after and hang_after
# come last so their rates are the shares of requests that succeed on the server yet fail for the
# client (a dropped connection; an answer held past the client's read timeout).
RATE_KINDS: Final = (
    "revoke_tokens",
    "drop_before",
    "hang",
    "rate_limit",
    "status_500",
    "status_502",
    "status_503",
    "status_504",
    "reject",
    "drop_after",
    "hang_after",
)

INJECTABLE_STATUSES: Final = frozenset({500, 502, 503, 504})
METHODS: Final = frozenset({"GET", "POST", "DELETE"})
# `cancel` is PortOne V2's POST /payments/{paymentId}/cash-receipt/cancel; i'mport's cancels are
# DELETE /receipts/....
ENDPOINTS: Final = frozenset({"receipts", "payments", "cancel"})
DEFAULT_REJECT_MESSAGE: Final = "[PG] 현금영수증 발급이 거절되었습니다."
# The PG's code in a V2 PG_PROVIDER error (i'mport's envelope has no place for one).
DEFAULT_PG_CODE: Final = "SANDBOX_REJECT"
DEFAULT_HANG_SECONDS: Final = 3600.0
# What a load balancer or gateway in front of an API answers when the API behind it is sick: not
# i'mport's envelope, not even JSON.
DEFAULT_GARBAGE_BODY: Final = "<html><body><h1>502 Bad Gateway</h1></body></html>"
# The bodies an `answer` step can carry: nothing, a gateway's page, JSON that is not i'mport's,
# and i'mport's own envelope.
BODY_KINDS: Final = ("empty", "html", "json", "envelope")


@dataclass(frozen=True)
class FaultStep:
    """One scripted (or drawn) failure and the requests it may apply to."""

    kind: str
    method: str | None = None
    endpoint: str | None = None
    ms: float = 0.0
    status: int = 500
    retry_after: float = 1.0
    seconds: float = DEFAULT_HANG_SECONDS
    message: str = DEFAULT_REJECT_MESSAGE
    pg_code: str = DEFAULT_PG_CODE
    body: str = DEFAULT_GARBAGE_BODY
    body_kind: str = "envelope"
    # An `answer` step's Retry-After header, as sent: seconds or an HTTP date; None sends none.
    retry_after_header: str | None = None

    def matches(self, method: str, endpoint: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.endpoint is None or self.endpoint == endpoint
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _number(raw: Mapping[str, Any], key: str, default: float, *, low: float = 0.0) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
        raise InvalidInput(f"{key} must be a number >= {low:g}, got {value!r}")
    return float(value)


def parse_step(raw: Any) -> FaultStep:
    """Validate one step of an admin or CLI script; ValueError says what is wrong."""
    if not isinstance(raw, dict):
        raise InvalidInput(f"a fault step must be an object, got {raw!r}")
    kind = raw.get("kind")
    if kind not in STEP_KINDS:
        raise InvalidInput(f"unknown fault kind {kind!r}; expected one of {', '.join(STEP_KINDS)}")
    allowed = {
        "kind",
        "method",
        "endpoint",
        "ms",
        "status",
        "retry_after",
        "seconds",
        "message",
        "pg_code",
        "body",
        "body_kind",
    }
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidInput(f"unknown fault step fields: {', '.join(unknown)}")
    method = raw.get("method")
    if method is not None:
        method = str(method).upper()
        if method not in METHODS:
            raise InvalidInput(f"method must be one of GET, POST, DELETE, got {raw['method']!r}")
    endpoint = raw.get("endpoint")
    if endpoint is not None and endpoint not in ENDPOINTS:
        raise InvalidInput(f"endpoint must be 'receipts', 'payments' or 'cancel', got {endpoint!r}")
    if kind == "reject":
        # A rejection is the PG refusing to issue or cancel; a lookup has nothing to refuse.
        method = method or "POST"
        endpoint = endpoint or "receipts"
        if (method, endpoint) not in {
            ("POST", "receipts"),
            ("DELETE", "receipts"),
            ("POST", "cancel"),
        }:
            raise InvalidInput(
                "a reject step applies only to an issue or a cancel: POST or DELETE /receipts, "
                "or (V2) POST with endpoint 'cancel'"
            )
    status = _status(raw, kind)
    body_kind = raw.get("body_kind", "envelope")
    if body_kind not in BODY_KINDS:
        raise InvalidInput(f"body_kind must be one of {', '.join(BODY_KINDS)}, got {body_kind!r}")
    header, retry_after = _retry_after(raw, kind)
    body = raw.get("body", DEFAULT_GARBAGE_BODY)
    if not isinstance(body, str):
        raise InvalidInput("body must be a string")
    message = raw.get("message", DEFAULT_REJECT_MESSAGE)
    if not isinstance(message, str) or not message:
        raise InvalidInput("message must be a non-empty string")
    pg_code = raw.get("pg_code", DEFAULT_PG_CODE)
    if not isinstance(pg_code, str) or not pg_code:
        raise InvalidInput("pg_code must be a non-empty string")
    return FaultStep(
        kind=kind,
        method=method,
        endpoint=endpoint,
        ms=_number(raw, "ms", 0.0),
        status=status,
        retry_after=retry_after,
        seconds=_number(raw, "seconds", DEFAULT_HANG_SECONDS),
        message=message,
        pg_code=pg_code,
        body=body,
        body_kind=body_kind,
        retry_after_header=header,
    )


def _status(raw: Mapping[str, Any], kind: str) -> int:
    """The step's status: 500-504 for a `status` step, any HTTP status for garbage or an answer."""
    status = raw.get("status", 502 if kind == "garbage" else 500)
    if kind == "status" and status not in INJECTABLE_STATUSES:
        raise InvalidInput(f"status must be one of 500, 502, 503, 504, got {status!r}")
    if kind in {"garbage", "answer"} and (
        isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599
    ):
        raise InvalidInput(f"a {kind} step's status must be an HTTP status 200-599, got {status!r}")
    return int(status)


def _retry_after(raw: Mapping[str, Any], kind: str) -> tuple[str | None, float]:
    """An `answer` step's Retry-After as sent (seconds, an HTTP date, or none); a 429's seconds."""
    if kind != "answer":
        return None, _number(raw, "retry_after", 1.0)
    value = raw.get("retry_after")
    if value is None:
        return None, 1.0
    if isinstance(value, str) and value.strip():
        return value.strip(), 1.0
    seconds = _number(raw, "retry_after", 1.0)
    return (str(int(seconds)) if seconds == int(seconds) else f"{seconds:g}"), seconds


def parse_rates(raw: Any) -> dict[str, float]:
    """Validate a rates object: known names, each an independent probability."""
    if not isinstance(raw, dict):
        raise InvalidInput("rates must be an object of KIND: probability")
    rates: dict[str, float] = {}
    for name, value in raw.items():
        if name not in RATE_KINDS:
            raise InvalidInput(f"unknown rate {name!r}; expected one of {', '.join(RATE_KINDS)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise InvalidInput(f"rate {name} must be a probability in [0, 1], got {value!r}")
        if value:
            rates[name] = float(value)
    return rates


def parse_rate_flag(text: str) -> tuple[str, float]:
    """Parse the CLI's KIND=RATE."""
    name, sep, value = text.partition("=")
    if not sep:
        raise InvalidInput(f"expected KIND=RATE, got {text!r}")
    try:
        rate = float(value)
    except ValueError:
        raise InvalidInput(f"rate for {name} is not a number: {value!r}") from None
    parsed = parse_rates({name: rate})
    return name, parsed.get(name, 0.0)


class FaultPlan:
    """The fault configuration and the random source that draws from it."""

    def __init__(self, seed: int | None = None) -> None:
        self.scripts: dict[Key, list[FaultStep]] = {}
        self.rates: dict[str, float] = {}
        self.latency_ms = 0.0
        self.latency_jitter_ms = 0.0
        self.hang_seconds = DEFAULT_HANG_SECONDS
        self.retry_after = 1.0
        self.reject_message = DEFAULT_REJECT_MESSAGE
        # The latest a request is acted on after it arrived, in seconds (None: no limit): the
        # provider's bound on late processing that the worker's IAMPORT_SETTLE_SECONDS assumes.
        self.late_limit_seconds: float | None = None
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - fault draws, not secrets

    def reseed(self, seed: int | None) -> None:
        self.seed = seed
        self._rng = random.Random(seed)  # noqa: S311 - fault draws, not secrets

    def append(self, key: Key, steps: list[FaultStep]) -> None:
        self.scripts.setdefault(key, []).extend(steps)

    def clear(self) -> None:
        self.scripts.clear()
        self.rates.clear()
        self.latency_ms = 0.0
        self.latency_jitter_ms = 0.0

    def configure(self, body: Any) -> None:
        """Apply an admin PUT body: given keys change, absent keys stay; `rates` replaces all rates.

        Everything is validated before anything changes, so a bad body leaves the plan intact.
        """
        if not isinstance(body, dict):
            raise InvalidInput("body must be a JSON object")
        allowed = {
            "latency_ms",
            "latency_jitter_ms",
            "rates",
            "seed",
            "hang_seconds",
            "retry_after",
            "reject_message",
            "late_limit_seconds",
        }
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(unknown)}")
        late_limit = self.late_limit_seconds
        if body.get("late_limit_seconds") is not None:
            late_limit = _number(body, "late_limit_seconds", 0.0)
        elif "late_limit_seconds" in body:
            late_limit = None
        latency = _number(body, "latency_ms", self.latency_ms)
        jitter = _number(body, "latency_jitter_ms", self.latency_jitter_ms)
        hang = _number(body, "hang_seconds", self.hang_seconds)
        rates = parse_rates(body["rates"]) if "rates" in body else self.rates
        retry_after = _number(body, "retry_after", self.retry_after)
        message = body.get("reject_message", self.reject_message)
        if not isinstance(message, str) or not message:
            raise InvalidInput("reject_message must be a non-empty string")
        seed = body.get("seed", self.seed)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise InvalidInput(f"seed must be an integer or null, got {seed!r}")
        self.latency_ms, self.latency_jitter_ms, self.hang_seconds = latency, jitter, hang
        self.rates = dict(rates)
        self.retry_after, self.reject_message = retry_after, message
        self.late_limit_seconds = late_limit
        if "seed" in body:
            self.reseed(seed)

    def pick(self, key: Key, method: str, endpoint: str) -> FaultStep | None:
        """Consume the first matching scripted step, else draw from the rates."""
        script = self.scripts.get(key)
        if script:
            for index, step in enumerate(script):
                if step.matches(method, endpoint):
                    del script[index]
                    if not script:
                        del self.scripts[key]
                    return step
        if not self.rates:
            return None
        for name in RATE_KINDS:
            rate = self.rates.get(name)
            if not rate:
                continue
            if name == "reject" and (method, endpoint) != ("POST", "receipts"):
                continue
            if self._rng.random() < rate:
                return self._drawn(name)
        return None

    def _drawn(self, name: str) -> FaultStep:
        if name.startswith("status_"):
            return FaultStep(kind="status", status=int(name.removeprefix("status_")))
        return FaultStep(
            kind=name,
            retry_after=self.retry_after,
            seconds=self.hang_seconds,
            message=self.reject_message,
        )

    def delay_seconds(self, step: FaultStep | None) -> float:
        """Global latency (plus jitter, uniform in [0, jitter]) and any scripted latency.

        The work comes after the delay, whether or not the client still waits, so a delay is
        how late a request is acted on: never more than ``late_limit_seconds``.
        """
        delay = self.latency_ms
        if self.latency_jitter_ms:
            delay += self._rng.uniform(0.0, self.latency_jitter_ms)
        if step is not None and step.kind == "latency":
            delay += step.ms
        seconds = delay / 1000.0
        if self.late_limit_seconds is not None:
            seconds = min(seconds, self.late_limit_seconds)
        return seconds

    def to_json(self) -> dict[str, Any]:
        return {
            "latency_ms": self.latency_ms,
            "latency_jitter_ms": self.latency_jitter_ms,
            "rates": {name: self.rates.get(name, 0.0) for name in RATE_KINDS},
            "hang_seconds": self.hang_seconds,
            "retry_after": self.retry_after,
            "reject_message": self.reject_message,
            "late_limit_seconds": self.late_limit_seconds,
            "seed": self.seed,
            "scripts": self._scripts_json(PAYMENT),
            "external_scripts": self._scripts_json(EXTERNAL),
            "portone_scripts": self._scripts_json(PORTONE),
        }

    def _scripts_json(self, kind: str) -> dict[str, list[dict[str, Any]]]:
        return {
            key.uid: [step.to_json() for step in steps]
            for key, steps in self.scripts.items()
            if key.kind == kind
        }
