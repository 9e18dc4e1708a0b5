"""The store's Redis scripts: the ``.lua`` files beside this module, shipped as package data.

A script's first line may name the fragments it needs (``-- needs: publish_once,
partial``): local functions shared by several scripts, each in a file of its own,
put before the script, in that order, when it is read. redis-py's
``register_script`` runs the joined text by EVALSHA, and loads it again on NOSCRIPT
(a restarted or flushed Redis). Not Redis Functions: their loaded state lives in the
RDB and AOF, and would need an upgrade path of its own.

A script builds no key name: every key reaches it in KEYS, or as a prefix in ARGV
when it can only be named from what the script reads (:mod:`worker.adapters.store.keys` holds them
all). Every script that needs the time reads Redis's own (``now_ms.lua``: ``TIME``,
plus a test's offset in ARGV), never its caller's: hosts' clocks differ
(:mod:`worker.adapters.store.clock`).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

_NEEDS = "-- needs:"


@cache
def source(name: str) -> str:
    """The text of ``name``.lua, after the fragments its first line says it needs."""
    text = files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    first = text.partition("\n")[0]
    if not first.startswith(_NEEDS):
        return text
    needs = [need.strip() for need in first.removeprefix(_NEEDS).split(",")]
    return "".join(source(need) for need in needs) + text
