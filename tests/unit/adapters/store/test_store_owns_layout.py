"""Only the store knows the Redis layout: key names, record fields, indexes (issue 13).

The CLI, the operator commands and the metrics once read ledger hashes
themselves, so a record's layout had copies that :mod:`worker.adapters.store`
could not see. They now read through :mod:`worker.adapters.store.views`. These
read the source tree, as a reviewer would: outside ``worker/adapters/store/``, no
module reads a store key or a hash, and only :mod:`worker.adapters.store.keys`
spells a key name, or derives one key from another (a suffix handed to one of its
functions). (The scripts' side is in ``test_lua.py``.) The core
reads a job through the job-store port's typed :class:`~worker.core.ports.JobView`
and records a step by a typed note: it names no hash field either.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from worker.adapters.store import keys

ROOT = Path(__file__).resolve().parents[4]
STORE = ROOT / "worker" / "adapters" / "store"
CORE = ROOT / "worker" / "core"
#: Every name the layout module defines: a key, a prefix, or a function that builds one.
KEY_NAMES = frozenset(
    name for name, value in vars(keys).items() if not name.startswith("_") and name.isupper()
) | frozenset(
    name
    for name, value in vars(keys).items()
    if callable(value) and getattr(value, "__module__", None) == keys.__name__
)
#: The functions of the layout module that build a key from an id.
KEY_FUNCTIONS = frozenset(name for name in KEY_NAMES if not name.isupper())
#: The namespaces of the store's keys (``cash_receipt:``, ``iamport:``): a string
#: holding one names a key, wherever it is written.
NAMESPACES = frozenset(
    value.partition(":")[0] + ":"
    for name, value in vars(keys).items()
    if name in KEY_NAMES and isinstance(value, str)
)
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
        for path in [
            *ROOT.glob("worker/**/*.py"),
            *ROOT.glob("tasks/**/*.py"),
            ROOT / "celeryconfig.py",
        ]
        if STORE not in path.parents
    )


def _spells_a_key(node: ast.AST) -> bool:
    """Whether ``node`` is a string holding one of the store's key namespaces."""
    return isinstance(node, ast.Constant) and any(
        namespace in str(node.value) for namespace in NAMESPACES
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
        if isinstance(node, ast.Constant) and _spells_a_key(node) and id(node) not in docstrings:
            leaks.append(f"{where}:{node.lineno}: spells a key: {node.value!r}")
        if isinstance(node, ast.Call) and _derives_a_key(node):
            leaks.append(f"{where}:{node.lineno}: derives a key: {ast.unparse(node)}")
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        command = node.func.attr
        if command not in READS:
            continue
        arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
        inner = [node for argument in arguments for node in ast.walk(argument)]
        names = {node.id for node in inner if isinstance(node, ast.Name)}
        names |= {node.attr for node in inner if isinstance(node, ast.Attribute)}
        spelled = any(_spells_a_key(node) for node in inner)
        if command in HASH_READS or names & KEY_NAMES or spelled:
            leaks.append(f"{where}:{node.lineno}: reads the store: {ast.unparse(node)}")
    return sorted(leaks, key=lambda leak: (int(leak.split(":")[1]), leak))


def _derives_a_key(call: ast.Call) -> bool:
    """Whether ``call`` hands a key function of the layout an id with a literal added to it.

    ``terminal_key(f"{task_id}:2")`` names a second key as surely as a literal does:
    the layout gives it a function of its own.
    """
    func = call.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    if name not in KEY_FUNCTIONS:
        return False
    arguments = [*call.args, *(keyword.value for keyword in call.keywords)]
    return any(
        isinstance(inner, ast.Constant) and isinstance(inner.value, str)
        for argument in arguments
        for inner in ast.walk(argument)
    )


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
        if "spells a key" in leak or "derives a key" in leak
    ]
    assert found == []


def test_the_layout_knows_its_namespaces() -> None:
    """The namespaces the checks look for are read from keys.py: the ledger's and the token's."""
    assert {"cash_receipt:", "iamport:"} <= NAMESPACES
    assert {"terminal_key", "second_terminal_key", "token_key"} <= KEY_FUNCTIONS


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
    token = "iamport:token:" + digest
    marker = terminal_key(f"{task_id}:2")
    other = keys.terminal_key(task_id + ":2")
    fine = terminal_key(task_id)
'''
    leaks = layout_leaks(source, "example.py")
    assert [leak.split(": ")[0:2] for leak in leaks] == [
        ["example.py:5", "reads the store"],
        ["example.py:6", "reads the store"],
        ["example.py:7", "reads the store"],
        ["example.py:8", "reads the store"],
        ["example.py:9", "reads the store"],
        ["example.py:9", "spells a key"],
        ["example.py:11", "spells a key"],
        ["example.py:12", "derives a key"],
        ["example.py:13", "derives a key"],
    ]


#: Hash fields only the ledger record has (worker/adapters/store/record.py): nowhere in the
#: core may these strings appear.
_LEDGER_FIELDS = frozenset(
    {
        "sent_at",
        "sent_op",
        "delete_sent_at",
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


def test_the_moved_keys_keep_their_names() -> None:
    """Deployed data names these keys: a change needs a new layout version and its migration.

    Layout 2 (issue 14) moved every key but a V1 payment's record out of the records'
    prefix, named side keys and index members by receipt key, and gave the second
    marker a namespace of its own; the layout 1 names are the migration's to read.
    """
    assert keys.LAYOUT_VERSION == 2
    assert keys.ledger_key("x") == "cash_receipt:ledger:x"
    assert keys.history_key("x") == "cash_receipt:history:iamport:x"
    assert keys.waiters_key("x") == "cash_receipt:waiters:iamport:x"
    assert keys.status_key("x") == "cash_receipt:status:iamport:x"
    assert keys.terminal_key("t-1") == "cash_receipt:terminal:t-1"
    assert keys.second_terminal_key("t-1") == "cash_receipt:terminal_then:t-1"
    assert keys.payment_receipt_key("x") == "iamport:x"
    assert (keys.DUE_KEY, keys.DEAD_JOBS_KEY) == (
        "cash_receipt:index:due",
        "cash_receipt:index:failed",
    )
    assert keys.LAYOUT_1.due_key == "cash_receipt:ledger:due"
    assert keys.LAYOUT_1.dead_jobs_key == "cash_receipt:ledger:failed"
    assert keys.LAYOUT_1.last_event_prefix == "cash_receipt:last_event:"
    # The first 16 hex digits of sha256(b"imp_key"), as the client spelled it before.
    assert keys.token_key("imp_key") == "iamport:token:01c3dabcc604cf43"


def test_the_read_views_are_in_one_module() -> None:
    """The ledger module holds the job's transitions; every read view is in views.py.

    ``stuck``, ``job_history``, ``jobs_by_state`` and the rest once sat in ledger.py,
    so the CLI and the metrics imported two modules for one kind of read.
    """
    tree = ast.parse((STORE / "ledger.py").read_text(encoding="utf-8"))
    functions = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    ]
    assert functions == []


def _runtime_sources() -> dict[Path, str]:
    """The runtime's source, the store's own modules included."""
    paths = [*ROOT.glob("worker/**/*.py"), *ROOT.glob("tasks/**/*.py"), ROOT / "celeryconfig.py"]
    return {path: path.read_text(encoding="utf-8") for path in paths}


def test_no_store_call_is_for_the_tests_only() -> None:
    """Every public method and function of the store is called by the runtime (issue 13:
    no dead code). ``Ledger.note`` was called only by the layout scenarios."""
    sources = _runtime_sources()
    unused = []
    for path in sorted(STORE.glob("*.py")):
        text = sources[path]
        others = "\n".join(source for other, source in sources.items() if other != path)
        tree = ast.parse(text)
        # (what to report, a use from another module, a use from this one, its definition)
        methods = [
            (f"{node.name}.{item.name}", rf"\.{item.name}\b", rf"self\.{item.name}\b", 0)
            for node in tree.body
            if isinstance(node, ast.ClassDef)
            for item in node.body
            if isinstance(item, ast.FunctionDef) and not item.name.startswith("_")
        ]
        functions = [
            (node.name, rf"\b{node.name}\b", rf"\b{node.name}\(", 1)
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
        ]
        for name, elsewhere, within, defined in methods + functions:
            if not re.search(elsewhere, others) and len(re.findall(within, text)) <= defined:
                unused.append(f"{path.name}: {name}")
    assert unused == []
