"""The ledger's clock as a test reads and moves it: Redis's TIME, plus a ClockOffset.

The ledger stamps and compares every time by Redis's clock (issue 14, finding 6), which
a test cannot stop; it moves it by the offset the ledger was built with. Anything the
test keeps beside the ledger (a model's provider, its broker's countdowns) reads this
same clock, so that one jump moves them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from worker.adapters.store.clock import ClockOffset, redis_now


@dataclass
class LedgerClock:
    """Callable like :class:`tests.support.memory.Clock` (epoch s), moved by :meth:`advance`."""

    client: redis.Redis
    #: Hand it to the ledger (``clock_offset=``) and to whatever else reads the same clock.
    offset: ClockOffset = field(default_factory=ClockOffset)

    def __call__(self) -> float:
        return redis_now(self.client, self.offset)

    def advance(self, seconds: float) -> None:
        self.offset.ms += round(seconds * 1000)
