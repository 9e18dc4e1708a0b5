"""PortOne V2's ``Idempotency-Key``: one key per operation of a job and its generation.

PortOne V2 stores the answer to a POST under its ``Idempotency-Key`` for three hours
(research §2.5): the same key with the same body replays the stored answer, and a key
still being processed answers 409 ``IDEMPOTENCY_OUTSTANDING_REQUEST``. So a retry whose
outcome is unknown sends the same key and learns the outcome, rather than issuing
again. The key is derived, never random, so that any worker, after any crash, sends
the same key for the same request:

    base64url(SHA-256(provider, store, id, operation, generation))

- ``provider`` and ``store``: two stores (or a V1 and a V2 job) with the same id never
  share a key;
- ``id``: the provider's id of the job (a V2 ``paymentId``);
- ``operation``: ``issue``, ``cancel`` or ``reissue``;
- ``generation``: the job's count of definite answers and new operations. A key is
  reused only while the outcome is unknown or outstanding; a definite answer (a
  success, a final failure), a refund, a re-issue after it and a replay each start a
  new generation, and so a new key.

The parts are joined with NUL, which no part may contain, so no two tuples make one
input. The digest is 43 characters of ``[A-Za-z0-9_-]``: within the 16–256 ASCII
characters PortOne accepts, and within the characters it recommends. The header value
is quoted, as PortOne's docs ask (an RFC 8941 string).
"""

from __future__ import annotations

import base64
import hashlib

#: The operations a key is made for.
OPERATIONS = frozenset({"issue", "cancel", "reissue"})


def idempotency_key(*, provider: str, store: str, id: str, operation: str, generation: int) -> str:
    """The key of one request: the same inputs always give the same key."""
    if operation not in OPERATIONS:
        raise ValueError(f"no idempotency key for operation {operation!r}")
    if generation < 0:
        raise ValueError("a generation counts from 0")
    parts = (provider, store, id, operation, str(generation))
    if any("\0" in part for part in parts):
        raise ValueError("a part of an idempotency key cannot contain NUL")
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def header_value(key: str) -> str:
    """The ``Idempotency-Key`` header's value: the key, quoted (RFC 8941 string)."""
    return f'"{key}"'
