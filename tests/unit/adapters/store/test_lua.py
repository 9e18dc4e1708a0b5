"""The store's scripts are .lua files, joined at load time, that build no key name (issue 13).

Lua in a Python string is read by nobody's Lua tooling and was assembled by string
concatenation; a key name spelled inside a script is a second copy of the layout
that :mod:`worker.adapters.store.keys` cannot see. These read the source tree, as a reviewer would.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from worker.adapters.store import lua

ROOT = Path(__file__).resolve().parents[4]
LUA_DIR = ROOT / "worker" / "adapters" / "store" / "lua"
SCRIPTS = sorted(path.stem for path in LUA_DIR.glob("*.lua"))
#: What only Lua for Redis says: a call into Redis, or the arguments of a script.
LUA_MARKERS = re.compile(r"redis\.p?call\(|redis\.sha1hex|\bKEYS\[\d|\bARGV\[\d|cjson\.")


def test_no_lua_in_python_strings() -> None:
    """No module of the runtime holds Lua: every script is a file in worker/adapters/store/lua/."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted([*ROOT.glob("worker/**/*.py"), *ROOT.glob("tasks/**/*.py")])
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if LUA_MARKERS.search(line)
    ]
    assert found == []


def test_the_marker_finds_lua() -> None:
    """The search above would see the Lua it looks for (it is no empty pattern)."""
    text = lua.source("finish")
    assert LUA_MARKERS.search(text)
    assert sum(1 for line in text.splitlines() if LUA_MARKERS.search(line)) > 50


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_spells_a_key_name(name: str) -> None:
    """Keys reach a script as KEYS, or as a prefix in ARGV: none is written in the Lua."""
    text = (LUA_DIR / f"{name}.lua").read_text()
    code = "\n".join(line.partition("--")[0] for line in text.splitlines())
    literals = re.findall(r"'([^']*)'|\"([^\"]*)\"", code)
    assert [lit for pair in literals for lit in pair if "cash_receipt" in lit or ":" in lit] == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_loads_with_its_fragments(name: str) -> None:
    """A script's fragments come first, once each, and each one exists; a script that
    needs ``once`` is run inside it (issue 14, finding 8)."""
    text = lua.source(name)
    own = (LUA_DIR / f"{name}.lua").read_text()
    first = own.partition("\n")[0]
    if first.startswith("-- needs:"):
        needs = [need.strip() for need in first.removeprefix("-- needs:").split(",")]
        body = f"return once(function()\n{own}end)\n" if "once" in needs else own
        assert text == "".join((LUA_DIR / f"{need}.lua").read_text() for need in needs) + body
        for need in needs:
            assert f"local function {need}(" in text
    else:
        assert text == own


def test_every_script_is_used() -> None:
    """Each .lua file is loaded by a module, or needed by a script: none is left behind."""
    python = "\n".join(path.read_text() for path in ROOT.glob("worker/**/*.py"))
    needed = "\n".join((LUA_DIR / f"{name}.lua").read_text().partition("\n")[0] for name in SCRIPTS)
    unused = [
        name
        for name in SCRIPTS
        if f'lua.source("{name}")' not in python
        and f'OnceScript(client, "{name}")' not in python
        and not re.search(rf"\b{name}\b", needed)
    ]
    assert unused == []


#: A command that bounds how long or how much Redis keeps: its bound is a setting.
_BOUNDS = re.compile(r"redis\.call\('(?:LTRIM|EXPIRE|PEXPIRE|XTRIM)'[^)]*\)")


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_writes_a_retention(name: str) -> None:
    """A trim length or a lifetime reaches a script in ARGV, from worker/config/defaults.py.

    The history's cap was written ``LTRIM 0 49`` in two scripts; one constant now
    sets it for both.
    """
    text = (LUA_DIR / f"{name}.lua").read_text()
    code = "\n".join(line.partition("--")[0] for line in text.splitlines())
    bounds = [
        call
        for call in _BOUNDS.findall(code)
        if re.search(r"\b(?![01]\b)\d+\b", re.sub(r"(?:KEYS|ARGV)\[\d+\]", "", call))
    ]
    assert bounds == []


#: The scripts that change the ledger, its stream or its parked messages.
_MUTATING = re.compile(
    r"redis\.call\('(?:SET|HSET|HDEL|HINCRBY|ZADD|ZREM|SADD|SREM|DEL|XADD|LPUSH|RPUSH|LSET|RPOP|PERSIST|EXPIRE|RENAME)'"
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_that_writes_is_safe_to_re_run(name: str) -> None:
    """A script that writes needs ``once`` (issue 14, finding 8), but the few whose re-run
    writes nothing new: ``note`` (the same fields again, fenced), the sweep lock's release,
    forgetting gone consumers, the layout migration's moves (a re-run finds the key moved,
    and the migration loops until nothing is left), the re-sealing's compare-and-set
    writes (a re-run finds the value it wrote, and writes nothing); and the fragments,
    which run inside their scripts."""
    own = (LUA_DIR / f"{name}.lua").read_text()
    first = own.partition("\n")[0]
    needs = []
    if first.startswith("-- needs:"):
        needs = [need.strip() for need in first.removeprefix("-- needs:").split(",")]
    code = "".join((LUA_DIR / f"{need}.lua").read_text() for need in needs if need != "once")
    writes = _MUTATING.search(code + own)
    fragment = f"local function {name}(" in own
    exempt = {"note", "release_lock", "forget_gone_consumers"}
    idempotent = name in exempt or name.startswith(("migrate_", "reseal_"))
    if fragment or idempotent or not writes:
        assert "once" not in needs
    else:
        assert "once" in needs
