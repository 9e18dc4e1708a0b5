"""What `pip install cashreceipt` and the worker image get: the runtime, and nothing else.

The wheel is what docker/Dockerfile installs in the worker image, and what a
library user gets from an index. The sandbox (sandbox/, iamport-sandbox), the
benchmark with the private servers (bench/, cashreceipt-bench) and the tests are
distributions or files of their own and must stay out of it, as code and as
requirements. Flower is the ``flower`` extra: operators install it, workers do not.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
#: uv from the locked dev group: the version the Makefile bootstraps.
UV = Path(sys.executable).parent / "uv"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("wheel")
    # The wheel is built from the sdist (uv build's default), in a fresh directory:
    # built in place, setuptools would reuse the checkout's build/lib, which keeps
    # the files of earlier builds, a script since renamed or removed included.
    subprocess.run(
        [UV, "build", "--quiet", "--out-dir", out, ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("cashreceipt-*.whl")
    yield built


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def _requirements(wheel: Path) -> dict[str, Requirement]:
    return {
        (req := Requirement(line)).name: req for line in _metadata(wheel).get_all("Requires-Dist")
    }


def test_wheel_has_config_tasks_and_console_script(wheel: Path) -> None:
    """celeryconfig.py, both packages and the console script are in the wheel.

    The image installs this wheel, so a module or script missing here is missing in
    production.
    """
    names = zipfile.ZipFile(wheel).namelist()
    for expected in (
        "celeryconfig.py",
        "worker/celery/app.py",
        # The ingress container's health check: `python -m worker.health ingress`.
        "worker/health.py",
        "tasks/receipts.py",
    ):
        assert expected in names
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "cashreceipt = worker.cli:main" in text
    assert "iamport-sandbox" not in text


def test_wheel_has_the_lua_scripts(wheel: Path) -> None:
    """Every script of worker/adapters/store/lua/ is in the wheel: the store reads them at run time.

    They are package data, not modules: a build that only picked up ``*.py`` would
    install a worker that fails at its first Redis transition.
    """
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(name for name in names if name.endswith(".lua"))
    expected = sorted(
        f"worker/adapters/store/lua/{path.name}"
        for path in (ROOT / "worker" / "adapters" / "store" / "lua").glob("*.lua")
    )
    assert len(expected) > 10
    assert shipped == expected
    for name in expected:
        assert zipfile.ZipFile(wheel).read(name) == (ROOT / name).read_bytes()


def test_wheel_carries_no_sandbox_benchmark_or_tests(wheel: Path) -> None:
    """Only the runtime's top-level packages: worker, tasks, celeryconfig, and the metadata."""
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"worker", "tasks", "celeryconfig.py", "cashreceipt-0.1.0.dist-info"}
    assert not any("aiohttp" in name or "sandbox" in name for name in names)


def test_wheel_requires_the_runtime_only(wheel: Path) -> None:
    """No aiohttp, no sandbox or benchmark; Flower only under its extra; no dev tool."""
    requirements = _requirements(wheel)
    assert set(requirements) == {
        "celery",
        "kombu",
        "redis",
        "requests",
        "urllib3",
        "marshmallow",
        "cryptography",
        "click",
        "prometheus-client",
        "flower",
    }
    for name, requirement in requirements.items():
        if name == "flower":
            assert str(requirement.marker) == 'extra == "flower"'
        else:
            assert requirement.marker is None, name
    assert _metadata(wheel).get_all("Provides-Extra") == ["flower"]


#: The runtime's requirements with a known CVE below a release: (name, first fixed, which).
FIXED = [
    ("requests", "2.32.4", "CVE-2024-47081"),
    ("urllib3", "2.6.0", "CVE-2025-66418, CVE-2025-66471"),
    ("cryptography", "44.0.1", "CVE-2024-12797"),
    ("marshmallow", "4.1.2", "CVE-2025-68480"),
]


@pytest.mark.parametrize(("name", "first_fixed", "why"), FIXED)
def test_floors_are_above_the_known_cves(
    wheel: Path, name: str, first_fixed: str, why: str
) -> None:
    """No version the range admits is older than the fix (a floor at or above it)."""
    specifier = _requirements(wheel)[name].specifier
    floors = [Version(s.version) for s in specifier if s.operator in {">=", "=="}]
    assert floors, f"{name} has no floor ({why})"
    assert min(floors) >= Version(first_fixed), f"{name} {specifier} admits {why}"


def test_the_lock_installs_no_release_below_a_fix_and_no_kombu_5_8() -> None:
    """What make install and the image install: uv.lock, the sandbox's aiohttp included."""
    with (ROOT / "uv.lock").open("rb") as lock:
        locked = {p["name"]: Version(p["version"]) for p in tomllib.load(lock)["package"]}
    for name, first_fixed, why in [*FIXED, ("aiohttp", "3.14.3", "the sandbox's floor")]:
        assert locked[name] >= Version(first_fixed), f"uv.lock has {name} {locked[name]} ({why})"
    assert locked["kombu"] < Version("5.8")


def test_kombu_stays_below_the_next_minor(wheel: Path) -> None:
    """worker/celery/transport.py and worker/celery/consumer.py override kombu internals."""
    specifier = _requirements(wheel)["kombu"].specifier
    assert not specifier.contains("5.8.0")
    assert specifier.contains("5.7.0")


@pytest.fixture(scope="module")
def runtime_only(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with what `pip install cashreceipt` gets: the wheel, and the runtime from uv.lock.

    The requirements come from the lock as `make install` takes them, so from uv's
    cache after it (about a second); the project itself is the wheel just built, not
    uv's cached build, which is keyed on pyproject.toml and would miss a code change.
    """
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    for command in (
        [UV, "sync", "--frozen", "--package", "cashreceipt", "--no-dev", "--no-install-project"],
        [UV, "pip", "install", "--python", venv / "bin" / "python", "--no-deps", wheel],
    ):
        subprocess.run(
            [*command, "--quiet"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=300
        )
    return venv


def test_the_runtime_install_has_no_sandbox_benchmark_aiohttp_or_flower(runtime_only: Path) -> None:
    (site,) = runtime_only.glob("lib/python*/site-packages")
    installed = {path.name.split("-")[0].lower() for path in site.iterdir()}
    assert {"worker", "tasks", "celery", "kombu"} <= installed
    assert not installed & {"iamport_sandbox", "cashreceipt_bench", "aiohttp", "flower", "tests"}


def test_bench_without_the_benchmark_says_how_to_install_it(runtime_only: Path) -> None:
    """One line on stderr and exit code 2 (a usage or configuration error), no traceback."""
    result = subprocess.run(
        [runtime_only / "bin" / "cashreceipt", "bench"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "cashreceipt bench needs the benchmark, which is not installed: from a checkout of "
        "this repository, `pip install ./sandbox ./bench` (or `make install`)\n"
    )


def test_the_worker_never_imports_the_sandbox() -> None:
    """Production code must not depend on the simulator: it is a test and demo tool only."""
    probe = (
        "import sys, worker.celery, worker.cli, worker.ingress, tasks.receipts; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'iamport_sandbox'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "ALLOW_PLAINTEXT_PII": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_the_bootstrapped_uv_is_the_locked_one() -> None:
    """tools/uv-requirements.txt (what the Makefile installs) is the uv group's export, hashes
    and all, and pyproject.toml requires that version: `make lock` keeps them together."""
    exported = subprocess.run(
        [UV, "export", "--frozen", "--only-group", "uv", "--no-emit-workspace", "--no-header"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert (ROOT / "tools" / "uv-requirements.txt").read_text() == exported
    with (ROOT / "pyproject.toml").open("rb") as file:
        required = tomllib.load(file)["tool"]["uv"]["required-version"]
    assert exported.startswith(f"uv{required} \\\n")
