"""Sealing identifiers at rest with Fernet, so the broker and Redis never hold them in clear.

A sealed identifier is one Fernet token (AES-128-CBC + HMAC-SHA256, with a
timestamp) in the payload field ``identifier_sealed``, instead of
``identifier``. Producers in other languages make it with any Fernet library
and the same key.

Keys come from ``PII_ENCRYPTION_KEYS`` (comma-separated, newest first) or the
file named by ``PII_ENCRYPTION_KEYS_FILE``. The newest key seals; every key
unseals (MultiFernet), so rotating means adding a key in front, re-sealing what
the store keeps (``cashreceipt reseal``, :mod:`worker.adapters.store.reseal`), and
only then dropping the old one: the store keeps sealed payloads far longer than
any message lives.

:class:`Sealer` implements the core's :class:`~worker.core.ports.Sealing` port. It lives
with the adapters because a Fernet token is made of the host's clock and randomness
(``time.time()``, ``os.urandom``), which the core never reads. The Celery glue and the
entry points build one per process and hand it in.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.core.ports import UnsealError

__all__ = ["Sealer", "SealingUnavailable", "UnsealError"]


class SealingUnavailable(RuntimeError):
    """No key is configured and plaintext was not explicitly allowed."""


class Sealer:
    """Seals and unseals identifiers; a no-op only when plaintext is explicitly allowed."""

    def __init__(self, keys: Sequence[str], *, allow_plaintext: bool = False) -> None:
        if not keys and not allow_plaintext:
            raise SealingUnavailable(
                "no PII encryption key: set PII_ENCRYPTION_KEYS (or PII_ENCRYPTION_KEYS_FILE) "
                "to one or more Fernet keys, newest first; generate one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`. For local development only, "
                "ALLOW_PLAINTEXT_PII=1 lets identifiers travel in clear"
            )
        self._fernet = MultiFernet([Fernet(key) for key in keys]) if keys else None
        self._newest = Fernet(keys[0]) if keys else None

    @classmethod
    def from_conf(cls, conf: object) -> Sealer:
        """The sealer for a Celery app's configuration (see celeryconfig).

        One per key set in a process, built on first use: the worker's runtime, the
        ingress and the producer helper (called once per payload) share it.
        """
        keys = tuple(getattr(conf, "pii_encryption_keys", None) or ())
        return _shared(keys, bool(getattr(conf, "allow_plaintext_pii", False)))

    @property
    def enabled(self) -> bool:
        """False only in the explicitly allowed plaintext mode."""
        return self._fernet is not None

    def seal(self, value: str) -> str:
        """The Fernet token of ``value`` under the newest key."""
        if self._fernet is None:
            raise SealingUnavailable("sealing is off (ALLOW_PLAINTEXT_PII=1 without a key)")
        return self._fernet.encrypt(value.encode()).decode("ascii")

    def unseal(self, token: str) -> str:
        """The value inside ``token``; raises :class:`UnsealError` without saying more."""
        return self.open(token)[0]

    def open(self, token: str) -> tuple[str, bool]:
        """The value inside ``token``, and whether the newest key sealed it.

        A token under the newest key is as good as a fresh seal of its value,
        so it may travel on unchanged (one encryption saved per task); one under
        an older key is re-sealed, which is how rotation retires old keys.
        """
        if self._fernet is None or self._newest is None:
            raise UnsealError("no key is configured to unseal it")
        try:
            raw = token.encode("ascii")
            try:
                return self._newest.decrypt(raw).decode(), True
            except InvalidToken:
                return self._fernet.decrypt(raw).decode(), False
        except (InvalidToken, UnicodeError, ValueError):
            raise UnsealError("it cannot be unsealed with the configured keys") from None


@functools.lru_cache(maxsize=8)
def _shared(keys: tuple[str, ...], allow_plaintext: bool) -> Sealer:
    """The one sealer of a key set (a refusal is raised each time, never kept)."""
    return Sealer(keys, allow_plaintext=allow_plaintext)
