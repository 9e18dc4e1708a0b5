"""The one clock of the ledger: Redis's own (``TIME``), never a host's.

Leases, due times, the result stream's MINID and the oldest-due gauge are all
compared across hosts. Stamped by each caller's clock, a worker whose clock ran
an hour fast took over every live lease at once (issue 14, finding 6). So every
script reads Redis's ``TIME`` itself (worker/adapters/store/lua/now_ms.lua;
Redis 7 replicates a script's effects, not the script, so a script may read the
clock), and the Python side reads the same clock with :func:`redis_now`.

Tests move that clock with a :class:`ClockOffset`: milliseconds added to ``TIME``,
handed to every script as an argument. Only a test builds one: production code
passes none (an offset of 0), and no setting or environment variable reaches it,
so no deployment can run skewed by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass
class ClockOffset:
    """Test only: how far the ledger's clock is moved from Redis's ``TIME``, in milliseconds.

    Shared by every store object a test builds over one Redis (several ledgers,
    their event publisher, the views), so one :meth:`advance` moves them all, as
    real time would. Pass it as ``clock_offset=`` (e.g. ``Ledger(..., clock_offset=offset)``);
    the scripts add it to ``TIME``, so leases pass and due jobs come due without a sleep
    (``offset.ms += 60_000``: a minute passes). Redis's own expiries (``EX`` on markers,
    retention) keep real time.
    """

    ms: int = 0


def offset_ms(offset: ClockOffset | None) -> int:
    """The argument every timed script takes: the offset's milliseconds, 0 without one."""
    return offset.ms if offset is not None else 0


def redis_now(client: redis.Redis, offset: ClockOffset | None = None) -> float:
    """Redis's clock (epoch seconds), plus a test's offset: the time the scripts read."""
    return redis_now_ms(client, offset) / 1000


def redis_now_ms(client: redis.Redis, offset: ClockOffset | None = None) -> int:
    """:func:`redis_now` in whole milliseconds, as the scripts stamp records."""
    seconds, micros = client.time()
    return seconds * 1000 + micros // 1000 + offset_ms(offset)
