"""Only the store knows the Redis layout: key names, record fields, indexes (issue 13).

The CLI, the operator commands and the metrics once read ledger hashes
themselves, so a record's layout had copies that :mod:`worker.adapters.store`
could not see. They now read through :mod:`worker.adapters.store.views`. These
read the source tree, as a reviewer would: outside ``worker/adapters/store/``, no
module reads a store key or a hash, and only :mod:`worker.adapters.store.keys`
spells a key name. (The scripts' side is in ``test_lua.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

from worker.adapters.store import keys

ROOT = Path(__file__).resolve().parents[3]
STORE = ROOT / "worker" / "adapters" / "store"
#: Every name the layout module defines: a key, a prefix, or a function that builds one.
KEY_NAMES = frozenset(name for name in vars(keys) if not name.startswith("_")) - {"annotations"}
#: Redis commands that read a hash: records are the store's, whatever the key.
HASH_READS = frozenset(
    {"hgetall", "hget", "hmget", "hkeys", "hvals", "hexists", "hlen", "hscan", "hscan_iter"}
)
#: Redis commands that read, looked at when given one of the store's keys.
READS = HASH_READS | {
    "get",
    "mget",
    "exists",
    "zrange",
    "zrevrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zscore",
    "zcard",
    "zcount",
    "zrank",
    "lrange",
    "llen",
    "lindex",
    "xrange",
    "xrevrange",
    "xlen",
    "scan",
    "scan_iter",
}


def _runtime_modules() -> list[Path]:
    return sorted(
        path
        for path in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("tasks/**/*.py")]
        if STORE not in path.parents
    )


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of a module, its classes and its functions."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def layout_leaks(source: str, where: str) -> list[str]:
    """Where ``source`` reads a store key or a hash, or spells a key name."""
    tree = ast.parse(source)
    leaks = []
    docstrings = _docstrings(tree)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and "cash_receipt:" in node.value
            and id(node) not in docstrings
        ):
            leaks.append(f"{where}:{node.lineno}: spells a key: {node.value!r}")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        command = node.func.attr
        if command not in READS:
            continue
        arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
        inner = [node for argument in arguments for node in ast.walk(argument)]
        names = {node.id for node in inner if isinstance(node, ast.Name)}
        names |= {node.attr for node in inner if isinstance(node, ast.Attribute)}
        spelled = any(
            isinstance(node, ast.Constant) and "cash_receipt:" in str(node.value) for node in inner
        )
        if command in HASH_READS or names & KEY_NAMES or spelled:
            leaks.append(f"{where}:{node.lineno}: reads the store: {ast.unparse(node)}")
    return sorted(leaks, key=lambda leak: (int(leak.split(":")[1]), leak))


def test_only_the_store_reads_its_layout() -> None:
    """Entry points, the Celery glue and observability read the store through its views."""
    found = [
        leak
        for path in _runtime_modules()
        for leak in layout_leaks(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert found == []


def test_only_the_keys_module_spells_a_key() -> None:
    """Inside the store too, a key name is written once: in keys.py (docstrings aside)."""
    found = [
        leak
        for path in sorted(STORE.glob("**/*.py"))
        if path.name != "keys.py"
        for leak in layout_leaks(path.read_text(), "store")
        if "spells a key" in leak
    ]
    assert found == []


def test_the_check_sees_a_leak() -> None:
    """The checks above would see what they look for: each kind of leak is found."""
    source = '''
"""A docstring may name cash_receipt:ledger:<imp_uid>."""
from worker.adapters.store.keys import DUE_KEY, ledger_key
def f(client, imp_uid):
    client.hgetall(ledger_key(imp_uid))
    client.hmget("anything", ["state", "receipt"])
    client.zrange(DUE_KEY, 0, -1)
    client.scan_iter(match=f"{keys.LEDGER_PREFIX}*")
    client.llen("cash_receipt:parked")
    client.xread({stream: "$"})
'''
    leaks = layout_leaks(source, "example.py")
    assert [leak.split(": ")[0:2] for leak in leaks] == [
        ["example.py:5", "reads the store"],
        ["example.py:6", "reads the store"],
        ["example.py:7", "reads the store"],
        ["example.py:8", "reads the store"],
        ["example.py:9", "reads the store"],
        ["example.py:9", "spells a key"],
    ]
