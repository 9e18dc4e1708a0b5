"""A private redis-server per test session: never the shared one on 6379.

The class is shared with the benchmark (``cashreceipt_bench.servers``): fault tests
stop and restart it on the same port and folder, and its options make it ask
for a password or speak TLS only.
"""

from __future__ import annotations

from cashreceipt_bench.servers import RedisServer

__all__ = ["RedisServer"]
