"""The package's modules import each other without a cycle (issue 13).

A cycle is counted as import-linter (grimp) counts it: an import inside a function or
under ``if TYPE_CHECKING:`` is an edge like any other. Python tolerates such a cycle at
run time, which is why it can grow unseen; it still means no module in it can be read,
tested or moved without the others. String references (``include=["tasks.receipts"]``,
``"worker.celery.transport:Transport"``) are not imports and are not counted.

The unit tests follow the package's shape: each folder under tests/unit/ is a
package's path, and holds the tests of that package's modules.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: (importer, imported) -> the importer's line numbers.
Edges = dict[tuple[str, str], list[int]]


def project_modules(root: Path) -> dict[str, Path]:
    """Every module of the runtime, by dotted name: worker/, tasks/ and celeryconfig."""
    paths = [*root.glob("worker/**/*.py"), *root.glob("tasks/**/*.py"), root / "celeryconfig.py"]
    modules = {}
    for path in paths:
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: Mapping[str, Path]) -> str | None:
    """The project module ``name`` refers to: itself, or the nearest module above it."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _imported(node: ast.Import | ast.ImportFrom, module: str, path: Path) -> Iterable[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, base] if base else package)
    # `from worker import celery` imports the module worker.celery, not just worker.
    return [f"{base}.{alias.name}" for alias in node.names]


def import_edges(modules: Mapping[str, Path]) -> Edges:
    """Every import between project modules, wherever it stands in the file."""
    edges: Edges = {}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for name in _imported(node, module, path):
                target = _owner(name, modules)
                if target is not None and target != module:
                    edges.setdefault((module, target), []).append(node.lineno)
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for importer, imported in edges:
        graph.setdefault(importer, []).append(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, []):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shown(component: list[str], edges: Edges) -> str:
    inside = sorted((a, b) for a, b in edges if a in component and b in component)
    return "\n".join(f"  {a} -> {b} (line {', '.join(map(str, edges[a, b]))})" for a, b in inside)


def test_the_package_has_no_import_cycle() -> None:
    edges = import_edges(project_modules(ROOT))
    found = cycles(edges)
    assert not found, "import cycles:\n" + "\n\n".join(_shown(c, edges) for c in found)


def test_a_cycle_through_a_function_or_type_checking_import_is_found(tmp_path: Path) -> None:
    """The check sees the imports a cycle hides in: a function's body, TYPE_CHECKING."""
    package = tmp_path / "worker"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from worker.b import g\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n"
    )
    (package / "c.py").write_text("import worker.a\n")
    (package / "d.py").write_text("from worker import a\n")
    (tmp_path / "celeryconfig.py").write_text("")

    edges = import_edges(project_modules(tmp_path))

    assert cycles(edges) == [["worker.a", "worker.b", "worker.c"]]
    assert ("worker.d", "worker.a") in edges


def _layout_tree() -> list[str]:
    """The paths the README's Layout tree lists, one per line, from its indentation."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = readme.split("## Layout\n", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    paths: list[str] = []
    folders: list[tuple[int, str]] = []
    for line in tree.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        folders = [(level, folder) for level, folder in folders if level < depth]
        path = "".join(folder for _, folder in folders) + name
        if name.endswith("/"):
            folders.append((depth, name))
        paths.append(path)
    return paths


def test_readme_layout_lists_every_module_on_a_line_of_its_own() -> None:
    """The README's Layout tree is where a new maintainer starts: every module, one per
    line, at its real path, and nothing that does not exist."""
    listed = _layout_tree()
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in [*ROOT.glob("worker/**/*.py"), *ROOT.glob("tasks/*.py")]
        if path.name != "__init__.py" or path.parent.name in {"worker", "cli", "celery"}
    }
    assert sorted(modules - set(listed)) == []
    assert [path for path in listed if not (ROOT / path).exists()] == []
    assert len(listed) == len(set(listed))


#: The host's clocks, and sleeping on one: the core must take time from the JobStore port.
_CLOCK_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "sleep"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
}


def test_the_core_reads_no_clock_of_its_own() -> None:
    """Time reaches the core only through the store port, so a test can move it (issue 13)."""
    found = []
    for path in sorted((ROOT / "worker" / "core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and (node.value.id, node.attr) in _CLOCK_CALLS
            ):
                found.append(f"{path.name}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, f"the core reads the host clock: {found}"


#: What the core may not import, even where Python tolerates it (a function, TYPE_CHECKING):
#: cryptography reads the host's clock and randomness (a Fernet token carries its time).
_NOT_IN_THE_CORE = {"cryptography"}


def core_imports_of(root: Path, forbidden: set[str]) -> list[str]:
    """Where a module of ``worker/core`` imports one of ``forbidden``, wherever it stands."""
    found = []
    for name, path in sorted(project_modules(root).items()):
        if name != "worker.core" and not name.startswith("worker.core."):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [
                    f"{name}:{node.lineno} {target}"
                    for target in _imported(node, name, path)
                    if target.split(".")[0] in forbidden
                ]
    return found


def test_the_core_imports_no_cryptography() -> None:
    """Sealing is an adapter (issue 13): the core unseals through the Sealing port only,
    so it never reads the clock or the randomness a Fernet token is made of."""
    found = core_imports_of(ROOT, _NOT_IN_THE_CORE)
    assert not found, f"the core imports cryptography: {found}"


def test_a_core_import_of_cryptography_is_found(tmp_path: Path) -> None:
    """The check sees ``import``, ``from ... import`` and an import inside a function."""
    core = tmp_path / "worker" / "core"
    core.mkdir(parents=True)
    (tmp_path / "worker" / "__init__.py").write_text("")
    (core / "__init__.py").write_text("")
    (core / "a.py").write_text("import cryptography.fernet\n")
    (core / "b.py").write_text("def f():\n    from cryptography import fernet\n")
    (tmp_path / "worker" / "c.py").write_text("import cryptography\n")
    (tmp_path / "celeryconfig.py").write_text("")

    found = core_imports_of(tmp_path, _NOT_IN_THE_CORE)

    assert found == ["worker.core.a:1 cryptography.fernet", "worker.core.b:2 cryptography.fernet"]


#: What a function may import late: a distribution installed apart (the bench).
_OPTIONAL = {"cashreceipt_bench"}


def test_no_function_level_import_but_optional_distributions() -> None:
    """An import inside a function hid the cycles and the import-time settings read
    that issue 13 removed; only a distribution that may be absent is imported late."""
    late = []
    for name, path in sorted(project_modules(ROOT).items()):
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    targets = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = [node.module or ""]
                else:
                    continue
                late += [
                    f"{name}:{node.lineno} {target}"
                    for target in targets
                    if target.split(".")[0] not in _OPTIONAL
                ]
    assert not late, f"imports inside functions: {late}"


#: i'mport's own words: its host, its paths, its pay methods and statuses, its answer shapes.
#: Only the i'mport adapter may know them; the core speaks the provider port's neutral types.
_IAMPORT_WORDS = {
    "host": re.compile(r"iamport\.kr"),
    "path": re.compile(r"(?<!\w)/receipts(?!\.py)"),
    "pay method": re.compile(r"vbank"),
    "status": re.compile(r"\"paid\""),
    "answer shape": re.compile(r"ReceiptAnnotation|PaymentAnnotation"),
}


def test_the_core_speaks_no_iamport_vocabulary() -> None:
    """Nothing above the adapters knows an i'mport URL, envelope or status (issue 13).

    But the payload contract (contract.py): its words are fixed by the issues for every
    provider, and V1 happens to share some (an external receipt's ``pay_method``).
    """
    found = [
        f"{path.name}:{number} {what}"
        for path in sorted((ROOT / "worker" / "core").glob("*.py"))
        if path.name != "contract.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for what, pattern in _IAMPORT_WORDS.items()
        if pattern.search(line)
    ]
    assert not found, f"the core speaks i'mport: {found}"


def _home(module: str, path: Path) -> str:
    """The package a module's tests stand in: its own package; a package of data
    files only (``store/lua/``, its scripts) counts as a part of its parent."""
    if path.name != "__init__.py":
        return module.rpartition(".")[0]
    if any(p.name != "__init__.py" for p in path.parent.glob("*.py")):
        return module
    return module.rpartition(".")[0]


def mirror_problems(root: Path) -> list[str]:
    """Where tests/unit/ stops mirroring the package (issue 13).

    Each folder under tests/unit/ is a package's path under worker/ (with an
    ``__init__.py`` of its own), and a test file in it that imports worker modules
    imports at least one module of that very package: a file that tests only other
    packages' code (another layer's, or a subpackage's) stands in the wrong folder.
    The files at the top are the whole-package checks.
    """
    tests = root / "tests" / "unit"
    modules = {m: p for m, p in project_modules(root).items() if m.startswith("worker")}
    problems = []
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir() and p.name != "__pycache__"):
        parts = folder.relative_to(tests).parts
        if not (root / "worker" / Path(*parts) / "__init__.py").is_file():
            problems.append(
                f"{folder.relative_to(root)}/ mirrors no package worker/{'/'.join(parts)}/"
            )
        if not (folder / "__init__.py").is_file():
            problems.append(f"{folder.relative_to(root)}/ has no __init__.py")
    for path in sorted(tests.glob("*/**/test_*.py")):
        package = ".".join(("worker", *path.parent.relative_to(tests).parts))
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        owners = {
            owner
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path)))
            if isinstance(node, ast.Import | ast.ImportFrom)
            for name in _imported(node, module, path)
            if (owner := _owner(name, modules)) is not None
        }
        if owners and package not in {_home(owner, modules[owner]) for owner in owners}:
            problems.append(
                f"{path.relative_to(root)} tests no module of {package}: imports {sorted(owners)}"
            )
    return problems


def test_unit_tests_mirror_the_package() -> None:
    """A unit test stands in the folder of the package it tests: tests/unit/adapters/store/
    tests worker/adapters/store/, so a module's tests are found where the module is."""
    problems = mirror_problems(ROOT)
    assert not problems, "tests/unit/ does not mirror worker/:\n" + "\n".join(problems)


def test_a_misplaced_unit_test_is_found(tmp_path: Path) -> None:
    """The mirror check sees a folder with no package, and a test of another package's code."""
    for package in ("worker", "worker/core", "worker/adapters", "worker/adapters/store"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    for module in ("core/retry", "core/types", "adapters/store/ledger", "adapters/store/keys"):
        (tmp_path / "worker" / f"{module}.py").write_text("")
    (tmp_path / "celeryconfig.py").write_text("")
    for folder in ("core", "adapters", "adapters/store", "adapters/redis"):
        (tmp_path / "tests/unit" / folder).mkdir(parents=True)
        (tmp_path / "tests/unit" / folder / "__init__.py").write_text("")
    unit = tmp_path / "tests/unit"
    (unit / "test_whole.py").write_text("import worker.adapters.store.ledger\n")
    (unit / "core/test_rules.py").write_text("from worker.core import retry\n")
    (unit / "core/test_ledger.py").write_text("from worker.adapters.store.ledger import Ledger\n")
    (unit / "adapters/test_keys.py").write_text("from worker.adapters.store import keys\n")
    (unit / "adapters/store/test_keys.py").write_text(
        "from worker.core.types import Receipt\nfrom worker.adapters.store import keys\n"
    )
    (unit / "adapters/store/test_env.py").write_text("import subprocess\n")

    assert mirror_problems(tmp_path) == [
        "tests/unit/adapters/redis/ mirrors no package worker/adapters/redis/",
        "tests/unit/adapters/test_keys.py tests no module of worker.adapters:"
        " imports ['worker.adapters.store.keys']",
        "tests/unit/core/test_ledger.py tests no module of worker.core:"
        " imports ['worker.adapters.store.ledger']",
    ]
