"""docker/: the compose stack runs what the tests run, and .env.example lists every setting.

No Docker engine runs here (``make docker-check`` validates the files with
hadolint and ``docker-compose config``); these tests check what the issue
asks of their content.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
#: Read by docker-compose.yml itself (interpolation), by Flower, not by celeryconfig.py.
COMPOSE_ONLY = {"FLOWER_BASIC_AUTH"}
#: Variables celeryconfig.py names only to refuse them: not settings.
REFUSED = {"CELERY_BROKER_URL", "CELERY_BROKER_READ_URL", "CELERY_BROKER_WRITE_URL"}
REFUSED |= {"CELERY_RESULT_BACKEND"}
_ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    return loaded


def services() -> dict[str, Any]:
    found: dict[str, Any] = compose()["services"]
    return found


def settings_read_by_celeryconfig() -> set[str]:
    """Every environment variable celeryconfig.py reads, from its source.

    A variable is read when its name is the second argument of an ``env_*``
    parser or the argument of ``env.get``, or listed in a ``*_VARIABLES`` tuple
    that is read in a loop; the tuple of refused Celery variables is not.
    """
    tree = ast.parse((ROOT / "celeryconfig.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            position = 1 if called.startswith("env_") else 0 if called == "get" else None
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id.endswith("_VARIABLES"):
                names |= {
                    element.value
                    for element in node.value.elts
                    if isinstance(element, ast.Constant) and isinstance(element.value, str)
                }
    return {name for name in names if re.fullmatch(r"[A-Z][A-Z0-9_]+", name)} - REFUSED


def test_the_settings_parser_finds_what_it_should() -> None:
    """Guard for the parser below: it sees known settings of every kind."""
    found = settings_read_by_celeryconfig()
    for name in (
        "REDIS_URL",  # env_url
        "BROKER_URL",  # env_str + env_url
        "IAMPORT_TIMEOUT",  # env_number
        "PII_ENCRYPTION_KEYS_FILE",  # env_str inside fernet_keys
        "IAMPORT_ALLOW_HTTP",  # env_flag
        "BROKER_QUEUE_TYPE",  # env_choice
        "REQUESTS_CA_BUNDLE",  # a *_VARIABLES tuple
        "WORKER_SOFT_SHUTDOWN_TIMEOUT",
    ):
        assert name in found
    assert not found & REFUSED
    assert len(found) >= 25


def test_env_example_lists_every_setting_and_only_settings() -> None:
    """Each variable celeryconfig.py reads is in .env.example (commented when optional)."""
    listed = set(_ENV_LINE.findall((DOCKER / ".env.example").read_text()))
    read = settings_read_by_celeryconfig()
    assert read - listed == set(), "missing from docker/.env.example"
    assert listed - read - COMPOSE_ONLY == set(), "in docker/.env.example, read by nothing"


def test_every_service_runs_the_command_the_tests_run() -> None:
    found = services()
    assert tuple(found["worker"]["command"]) == commands.WORKER
    assert tuple(found["ingress"]["command"]) == commands.INGRESS
    assert tuple(found["flower"]["command"]) == (*commands.FLOWER, "--port=5555")
    assert tuple(found["sandbox"]["command"]) == (
        *commands.SANDBOX,
        "--host",
        "0.0.0.0",  # noqa: S104 (inside the stack's own network)
        "--port",
        "8787",
    )


def test_redis_is_durable_and_never_evicts() -> None:
    redis = services()["redis"]
    command = " ".join(redis["command"])
    for flag in ("--appendonly yes", "--appendfsync always", "--maxmemory-policy noeviction"):
        assert flag in command
    assert redis["healthcheck"]["test"]


@pytest.mark.parametrize("name", ["worker", "ingress", "flower", "sandbox"])
def test_each_app_service_has_a_health_check_of_its_own(name: str) -> None:
    """One image serves them all: none may inherit the worker's ping."""
    check = services()[name]["healthcheck"]["test"]
    if name == "worker":
        assert "inspect ping" in " ".join(check)
    else:
        assert "inspect ping" not in " ".join(check)


def test_two_workers_and_the_sandbox_only_for_dev() -> None:
    found = services()
    assert found["worker"]["deploy"]["replicas"] == 2
    assert found["sandbox"]["profiles"] == ["dev"]
    assert all("profiles" not in found[name] for name in ("redis", "worker", "ingress", "flower"))


def test_flower_is_read_only_and_needs_basic_auth() -> None:
    flower = services()["flower"]
    assert "--read_only=true" in flower["command"]
    # ${FLOWER_BASIC_AUTH:?...}: the stack refuses to start without it.
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_worker_grace_period_outlasts_the_soft_shutdown_and_one_request() -> None:
    """Docker's SIGKILL comes after the tasks in hand have finished or been handed back."""
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (DOCKER / ".env.example").read_text(), re.M))
    soft = float(example["WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    request = 2 * float(example["IAMPORT_TIMEOUT"])
    assert _seconds(services()["worker"]["stop_grace_period"]) > soft + request


def test_dockerfile_is_pinned_slim_non_root_with_a_health_check() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert len(bases) == 2  # build, then runtime
    for base in bases:
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    images = [service["image"] for service in services().values() if "build" not in service]
    assert all(re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+[\w.-]*", image) for image in images), images
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK ", text, re.MULTILINE)
    runtime = text[text.index("AS runtime") :]
    assert "COPY . " not in runtime
    assert "--no-index" in runtime


def test_readme_configuration_table_names_every_setting() -> None:
    """The README's configuration table is where operators look each setting up."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration") : readme.index("### The time rule")]
    rows = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert settings_read_by_celeryconfig() - rows == set()
