"""Waiting on conditions with a bound, instead of sleeping and hoping.

The code is shared with the benchmark (``cashreceipt_bench.servers``).
"""

from __future__ import annotations

from cashreceipt_bench.servers import WaitTimeout, free_port, wait_for

__all__ = ["WaitTimeout", "free_port", "wait_for"]
