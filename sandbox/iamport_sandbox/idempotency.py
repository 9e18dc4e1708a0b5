"""PortOne V2's `Idempotency-Key` header: stored answers, keys still outstanding, keys reused.

What PortOne documents (its V2 API overview, "멱등 키"; research portone-v2-and-webhooks.md §2.5):
the key is a unique string of 16-256 ASCII characters, sent quoted as an RFC 8941 string
(`Idempotency-Key: "unique-request-id-123"`); it applies to POST, PUT, PATCH and DELETE and is
ignored on GET; a retry while the first request is still being processed gets 409
`IDEMPOTENCY_OUTSTANDING_REQUEST`; a retry after it completed gets the stored answer, and nothing
is done again; a key is kept 3 hours ("subject to change"); a key must never be reused for a
different request.

What it does not say, and the sandbox chooses (docs/sandbox.md lists these as unconfirmed):
a key sent with a different request is refused with 422, as the IETF draft PortOne cites
(draft-ietf-httpapi-idempotency-key-header) asks, under the sandbox's own type
`IDEMPOTENCY_KEY_REUSED`; "the same request" means the same method, path, query and body bytes;
an unquoted or malformed key is refused; the 3 hours run from the key's first request, and a key
still outstanding never expires.

Retention is measured on the sandbox's adjustable clock, so a test can expire keys mid-job.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from iamport_sandbox.state import Reply
from iamport_sandbox.tokens import Clock

HEADER: Final = "Idempotency-Key"
DEFAULT_RETENTION_SECONDS: Final = 3 * 3600
MIN_LENGTH: Final = 16
MAX_LENGTH: Final = 256

# What a claim finds: a key never seen (or expired), the stored answer of the same request, the
# same key still being processed, or the key used for another request.
NEW: Final = "new"
REPLAYED: Final = "replayed"
OUTSTANDING: Final = "outstanding"
REUSED: Final = "reused"

# An RFC 8941 sf-string: printable ASCII in double quotes, `"` and `\` escaped by a backslash.
_SF_STRING: Final = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_ESCAPE: Final = re.compile(r'\\(["\\])')
# Records are swept for expiry every this many claims, so a long run does not keep them all.
_SWEEP_EVERY: Final = 1024


class KeyFormatError(ValueError):
    """An Idempotency-Key header PortOne's docs do not allow; the message says why."""


def parse_header(values: Sequence[str]) -> str | None:
    """The key a request carries (unquoted), None when it carries none."""
    if not values:
        return None
    if len(values) > 1:
        raise KeyFormatError(
            "Idempotency-Key 헤더는 한 번만 보낼 수 있습니다. (sent more than once)"
        )
    match = _SF_STRING.fullmatch(values[0].strip(" "))
    if match is None:
        raise KeyFormatError(
            "Idempotency-Key는 쌍따옴표로 감싼 ASCII 문자열이어야 합니다 (RFC 8941), "
            'e.g. Idempotency-Key: "unique-request-id-123"'
        )
    key = _ESCAPE.sub(r"\1", match.group(1))
    if not MIN_LENGTH <= len(key) <= MAX_LENGTH:
        raise KeyFormatError(
            f"Idempotency-Key는 {MIN_LENGTH}~{MAX_LENGTH}자여야 합니다. (length {len(key)})"
        )
    return key


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What makes two requests "the same": method, path, query string and body, byte for byte."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(slots=True)
class Record:
    """One key's request: outstanding until its answer is stored."""

    key: str
    fingerprint: str
    created_at: float
    reply: Reply | None = None

    @property
    def outstanding(self) -> bool:
        return self.reply is None


@dataclass(frozen=True, slots=True)
class Claim:
    """What a request carrying a key found: `state`, and the record it found or made."""

    state: str
    record: Record


class IdempotencyStore:
    """The keys of one merchant account, each kept `retention_seconds` after its first request."""

    def __init__(self, clock: Clock, retention_seconds: float = DEFAULT_RETENTION_SECONDS) -> None:
        self._clock = clock
        self.retention_seconds = retention_seconds
        self._records: dict[str, Record] = {}
        self._claims = 0

    def clear(self) -> None:
        self._records.clear()

    def _expired(self, record: Record, now: float) -> bool:
        return not record.outstanding and now >= record.created_at + self.retention_seconds

    def claim(self, key: str, request_fingerprint: str) -> Claim:
        """Look the key up for a request; a NEW claim holds the key outstanding until `complete`
        (or `release`)."""
        now = self._clock()
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._sweep(now)
        record = self._records.get(key)
        if record is not None and not self._expired(record, now):
            if record.fingerprint != request_fingerprint:
                return Claim(REUSED, record)
            return Claim(OUTSTANDING if record.outstanding else REPLAYED, record)
        record = Record(key=key, fingerprint=request_fingerprint, created_at=now)
        self._records[key] = record
        return Claim(NEW, record)

    def complete(self, record: Record, reply: Reply) -> None:
        """Store the answer: from now on the key replays it."""
        record.reply = reply

    def release(self, record: Record) -> None:
        """The request was admitted but never acted on: forget its key."""
        if record.outstanding and self._records.get(record.key) is record:
            del self._records[record.key]

    def _sweep(self, now: float) -> None:
        for key in [k for k, r in self._records.items() if self._expired(r, now)]:
            del self._records[key]

    def view(self) -> dict[str, Any]:
        """The retention and every live key: outstanding, or completed with the status stored."""
        now = self._clock()
        keys: dict[str, Any] = {}
        for key, record in self._records.items():
            if self._expired(record, now):
                continue
            keys[key] = {
                "state": "outstanding" if record.reply is None else "completed",
                "status": None if record.reply is None else record.reply.status,
                "created_at": record.created_at,
                "expires_at": None
                if record.reply is None
                else record.created_at + self.retention_seconds,
            }
        return {"retention_seconds": self.retention_seconds, "keys": keys}
