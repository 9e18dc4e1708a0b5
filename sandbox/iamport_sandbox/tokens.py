"""Access tokens with i'mport's reuse-and-extend policy (research §1.4, verified).

One merchant account has one current token. Asking again before expiry returns that same token;
asking inside its last minute pushes the expiry out by five minutes, so several servers sharing
one account never see their token die under them. Only after expiry is a new token minted.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from iamport_sandbox.errors import InvalidInput

Clock = Callable[[], float]


class AdjustableClock:
    """Wall clock that the admin API can move forward.

    Tests of the 30-minute lifetime must not wait 30 minutes, and a fake clock inside the
    sandbox is the only way a black-box client can meet an expired token on demand.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise InvalidInput("the sandbox clock only moves forward")
        self.offset += seconds


@dataclass(frozen=True)
class TokenPolicy:
    """The numbers behind the policy; the admin API changes them so renewal is testable fast."""

    lifetime: int = 1800
    extend_window: int = 60
    extension: int = 300

    def __post_init__(self) -> None:
        if self.lifetime < 1:
            raise InvalidInput("lifetime_seconds must be at least 1")
        if self.extend_window < 0 or self.extension < 0:
            raise InvalidInput("extend_window_seconds and extension_seconds must not be negative")


@dataclass
class Token:
    access_token: str
    issued_at: int
    expired_at: int


class TokenStore:
    """The single merchant account's token, following the policy given."""

    def __init__(self, clock: Clock, policy: TokenPolicy | None = None) -> None:
        self._clock = clock
        self.policy = policy or TokenPolicy()
        self.current: Token | None = None

    def issue(self) -> tuple[Token, int]:
        """Answer one getToken call: the token and the `now` to report with it."""
        now = int(self._clock())
        token = self.current
        if token is None or now >= token.expired_at:
            token = Token(secrets.token_hex(20), now, now + self.policy.lifetime)
            self.current = token
        elif token.expired_at - now <= self.policy.extend_window:
            token.expired_at += self.policy.extension
        return token, now

    def is_valid(self, access_token: str | None) -> bool:
        """A token is good until the second named by `expired_at`, which it does not include."""
        token = self.current
        if not access_token or token is None or access_token != token.access_token:
            return False
        return self._clock() < token.expired_at

    def revoke_all(self) -> None:
        """Forget every token, as a key rotation would; the next getToken mints a new one."""
        self.current = None
