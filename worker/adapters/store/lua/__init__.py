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

A script that needs ``once`` (every one that changes the ledger, but ``note``, whose
re-run writes the same fields again) is put inside ``return once(function() ... end)``:
its reply is kept under a key named by the call's own id (the last of its KEYS), so
that a client's re-run of the same call answers it again (:mod:`worker.adapters.store.once`).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

_NEEDS = "-- needs:"
#: The fragment that makes a script safe to re-run; its script is put inside it.
_ONCE = "once"


@cache
def source(name: str) -> str:
    """The text of ``name``.lua, after the fragments its first line says it needs."""
    text = files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    first = text.partition("\n")[0]
    if not first.startswith(_NEEDS):
        return text
    needs = [need.strip() for need in first.removeprefix(_NEEDS).split(",")]
    if _ONCE in needs:
        text = f"return {_ONCE}(function()\n{text}end)\n"
    return "".join(source(need) for need in needs) + text
