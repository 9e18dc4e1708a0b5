"""Only the store knows the Redis layout: key names, record fields, indexes (issue 13).

The CLI, the operator commands and the metrics once read ledger hashes
themselves, so a record's layout had copies that :mod:`worker.adapters.store`
could not see. They now read through :mod:`worker.adapters.store.views`. These
read the source tree, as a reviewer would: outside ``worker/adapters/store/``, no
module reads a store key or a hash, and only :mod:`worker.adapters.store.keys`
spells a key name. (The scripts' side is in ``test_lua.py``.) The core
reads a job through the job-store port's typed :class:`~worker.core.ports.JobView`
and records a step by a typed note: it names no hash field either.
"""

from __future__ import annotations

import ast
from pathlib import Path

from worker.adapters.store import keys

ROOT = Path(__file__).resolve().parents[3]
STORE = ROOT / "worker" / "adapters" / "store"
CORE = ROOT / "worker" / "core"
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


#: Hash fields only the ledger record has (worker/adapters/store/record.py): nowhere in the
#: core may these strings appear.
_LEDGER_FIELDS = frozenset(
    {
        "sent_at",
        "sent_op",
        "cancel_step",
        "cancelled_receipt",
        "lease_until",
        "next_attempt_at",
        "last_error",
        "pending_cancel",
        "pending_issue",
    }
)
#: Hash fields whose names events and payloads share: in the core, no mapping is read by them
#: (the events' and the payloads' own are built, not read, by these names).
_SHARED_FIELDS = frozenset({"task_id", "op", "cancel", "payload", "state", "fence", "attempts"})
#: Calls that read or write a record raw, as the store keeps it: none is the core's.
_RAW_RECORD_CALLS = frozenset({"record", "raw_record", "note", "note_all", "hgetall", "hset"})


def record_layout_leaks(source: str, where: str) -> list[str]:
    """Where ``source`` names a ledger-only hash field, reads a mapping by a record's
    field name (``record["op"]``, ``record.get("state")``), or calls a raw record API."""
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    leaks = []

    def read(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Constant) and node.value in _SHARED_FIELDS:
            return str(node.value)
        return None

    for node in ast.walk(tree):
        found: str | None = None
        if isinstance(node, ast.Constant) and node.value in _LEDGER_FIELDS:
            found = None if id(node) in docstrings else str(node.value)
        elif isinstance(node, ast.Subscript):
            found = read(node.slice)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _RAW_RECORD_CALLS:
                leaks.append(f"{where}:{node.lineno}: raw record call .{node.func.attr}()")
            if node.func.attr in {"get", "pop"} and node.args:
                found = read(node.args[0])
        if found is not None:
            leaks.append(f"{where}:{node.lineno}: hash field {found!r}")
    return sorted(leaks)


def test_the_core_reads_no_record_field() -> None:
    """The store owns the record's layout: the core reads a typed JobView, and records
    each step by a typed, fenced note (issue 13)."""
    found = [
        leak
        for path in sorted(CORE.glob("*.py"))
        for leak in record_layout_leaks(path.read_text(encoding="utf-8"), path.name)
    ]
    assert not found, f"the core reads the record's layout: {found}"


def test_the_record_check_sees_a_leak() -> None:
    """Each way a core module once leaked the layout is found; an event's key is not."""
    source = '''
"""A docstring may say sent_at."""
SENT_AT_FIELD = "sent_at"
def f(store, imp_uid, fence):
    record = store.record(imp_uid) or {}
    store.note_all(imp_uid, fence=fence, fields={"cancel_step": "cancelled"})
    event = {"task_id": record["task_id"], "state": record.get("state")}
    return event, store.claim(imp_uid, task_id="t", op="cancel")
'''
    assert record_layout_leaks(source, "x.py") == [
        "x.py:3: hash field 'sent_at'",
        "x.py:5: raw record call .record()",
        "x.py:6: hash field 'cancel_step'",
        "x.py:6: raw record call .note_all()",
        "x.py:7: hash field 'state'",
        "x.py:7: hash field 'task_id'",
    ]
