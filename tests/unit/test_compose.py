"""docker/: the compose stack runs what the tests run, and .env.example lists every setting.

No Docker engine runs here (``make docker-check`` lints the Dockerfile with
hadolint and validates the compose files against the Compose specification's
schema); these tests check what the issue asks of their content: the ACL, the
secrets and who gets each, Flower's binding and password, the images' targets.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import commands

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
#: Read by docker-compose.yml itself (interpolation), by Flower, not by celeryconfig.py.
COMPOSE_ONLY = {"FLOWER_BASIC_AUTH", "FLOWER_PUBLISH_ADDRESS"}
#: Each credential's secret, and the only services that get it.
SECRETS = {
    "redis": {"redis_password"},
    "worker": {"redis_url", "pii_keys", "iamport_secret", "portone_secret"},
    "ingress": {"redis_url", "pii_keys"},
    "flower": {"redis_url", "flower_basic_auth"},
    "sandbox": set(),
}
#: Settings that hold a credential: never a plain value in the environment or .env.
CREDENTIALS = ("IAMPORT_SECRET", "REDIS_URL", "BROKER_URL", "FLOWER_BASIC_AUTH")
CREDENTIALS += ("PII_ENCRYPTION_KEYS", "PORTONE_API_SECRET")
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
    """Every environment variable celeryconfig.py reads, from its source and worker/config's.

    A variable is read when its name is the second argument of an ``env_*``
    parser or the argument of ``env.get``, or listed in a ``*_VARIABLES`` tuple
    that is read in a loop; the tuple of refused Celery variables is not.
    Some are named only in the functions celeryconfig calls (``fernet_keys``,
    ``check_ca_bundles``, the secret files), which live in worker/config.
    """
    sources = [ROOT / "celeryconfig.py", *sorted((ROOT / "worker" / "config").glob("*.py"))]
    nodes = [node for path in sources for node in ast.walk(ast.parse(path.read_text()))]
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            position = 1 if called.startswith("env_") else 0 if called == "get" else None
            if position is not None and len(node.args) > position:
                argument = node.args[position]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value)
                    if called == "env_secret":  # the value, or the file X_FILE names
                        names.add(f"{argument.value}_FILE")
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
        "PII_ENCRYPTION_KEYS_FILE",  # env_secret inside fernet_keys
        "IAMPORT_SECRET_FILE",  # SECRET_FILE_VARIABLES
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


def test_no_obsolete_version_key() -> None:
    """Compose v2 ignores ``version:`` and warns that it is obsolete."""
    assert "version" not in compose()


def test_redis_runs_with_the_acl_file_and_its_health_check_logs_in() -> None:
    """The one ACL file is mounted and rendered by start.sh; PING as the ACL user."""
    redis = services()["redis"]
    assert redis["entrypoint"] == ["sh", "/etc/cashreceipt/start.sh"]
    assert "./redis:/etc/cashreceipt:ro" in redis["volumes"]
    start = (DOCKER / "redis" / "start.sh").read_text()
    assert "render-acl.sh /etc/cashreceipt/users.acl" in start
    assert '--aclfile "$acl"' in start
    assert "--user cashreceipt ping" in " ".join(redis["healthcheck"]["test"])


def test_the_tests_redis_uses_the_same_acl_file() -> None:
    from tests.support.redis_server import ACL

    assert ACL == DOCKER / "redis" / "users.acl"


def render_acl(tmp_path: Path, password: str) -> list[str]:
    secret = tmp_path / "password"
    secret.write_text(password, encoding="utf-8")
    script, template = DOCKER / "redis" / "render-acl.sh", DOCKER / "redis" / "users.acl"
    result = subprocess.run(
        ["sh", str(script), str(template), str(secret)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 or not password.strip(), result.stderr
    return result.stdout.splitlines() if result.returncode == 0 else [result.stderr]


def test_acl_renders_to_two_users_with_only_the_password_hash(tmp_path: Path) -> None:
    """No default user; the app user may run named commands only, none of the admin ones."""
    import hashlib

    lines = render_acl(tmp_path, "a-password-0123\n")
    # Off: nobody logs in as it. Its permissions are for replaying the AOF (test_redis_acl.py).
    default = lines[0].split()
    assert default[:3] == ["user", "default", "off"]
    assert not any(rule.startswith((">", "#", "nopass")) for rule in default)
    assert len(lines) == 2
    rules = lines[1].split()
    assert rules[:3] == ["user", "cashreceipt", "on"]
    assert f"#{hashlib.sha256(b'a-password-0123').hexdigest()}" in rules
    assert "a-password-0123" not in lines[1]
    assert rules.index("-@all") < min(i for i, rule in enumerate(rules) if rule.startswith("+"))
    allowed = {rule[1:] for rule in rules if rule.startswith("+")}
    assert not any(rule.startswith("@") for rule in allowed)
    for command in ("eval", "brpop", "xreadgroup", "publish", "ping", "client"):
        assert command in allowed
    for command in ("config", "flushall", "flushdb", "keys", "debug", "shutdown", "acl"):
        assert command not in allowed and not any(a.startswith(f"{command}|") for a in allowed)
    assert {"-client|kill", "-client|pause"} <= set(rules)


def test_acl_refuses_an_empty_password(tmp_path: Path) -> None:
    assert "is empty" in render_acl(tmp_path, "\n")[0]


def test_each_secret_goes_only_to_the_services_that_need_it() -> None:
    found = services()
    assert set(compose()["secrets"]) == set().union(*SECRETS.values())
    for name, expected in SECRETS.items():
        assert set(found[name].get("secrets", [])) == expected, name
        for variable, value in found[name].get("environment", {}).items():
            if variable.endswith("_FILE"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in expected, (name, variable)


def test_no_credential_is_a_plain_environment_value() -> None:
    """Not in the compose file's environment, nor set in .env.example (every service reads it)."""
    for name, service in services().items():
        assert not set(service.get("environment", {})) & set(CREDENTIALS), name
    example = (DOCKER / ".env.example").read_text()
    for variable in CREDENTIALS:
        assert not re.search(rf"^{variable}=", example, re.MULTILINE), variable


def test_each_service_builds_the_image_of_its_role() -> None:
    found = services()
    targets = {name: found[name].get("build", {}).get("target") for name in SECRETS}
    assert targets == {
        "redis": None,
        "worker": "worker",
        "ingress": "worker",
        "flower": "flower",
        "sandbox": "sandbox",
    }


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


def test_flower_is_read_only_on_loopback_with_its_password_from_a_secret() -> None:
    flower = services()["flower"]
    assert "--read_only=true" in flower["command"]
    assert flower["environment"]["FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert flower["ports"] == ["${FLOWER_PUBLISH_ADDRESS:-127.0.0.1}:5555:5555"]


def flower_entrypoint(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """docker/flower/entrypoint.sh with only ``env``, running ``env`` in place of Flower."""
    return subprocess.run(
        ["sh", str(DOCKER / "flower" / "entrypoint.sh"), "env"],
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_flower_entrypoint_reads_the_file_and_listens_on_loopback(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("ops:a-long-pass\n", encoding="utf-8")
    result = flower_entrypoint(tmp_path, FLOWER_BASIC_AUTH_FILE=str(auth))
    assert result.returncode == 0, result.stderr
    shown = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert shown["FLOWER_BASIC_AUTH"] == "ops:a-long-pass"
    assert shown["FLOWER_ADDRESS"] == "127.0.0.1"
    assert "FLOWER_BASIC_AUTH_FILE" not in shown


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("admin:change-me\n", {}, "refusing the example password"),
        ("ops:fine-pass,admin:change-me", {}, "refusing the example password"),
        ("admin:\n", {}, "must be user:password, with a password"),
        ("just-a-password", {}, "must be user:password"),
        ("\n", {}, "no password"),
        (None, {}, "cannot be read"),
        ("ops:fine-pass", {"FLOWER_BASIC_AUTH": "ops:other"}, "not both"),
    ],
)
def test_flower_entrypoint_refuses_to_start(
    tmp_path: Path, content: str | None, env: dict[str, str], message: str
) -> None:
    auth = tmp_path / "auth"
    if content is not None:
        auth.write_text(content, encoding="utf-8")
    result = flower_entrypoint(tmp_path, FLOWER_BASIC_AUTH_FILE=str(auth), **env)
    assert result.returncode == 64
    assert message in result.stderr
    assert result.stdout == ""
    assert "fine-pass" not in result.stderr


def test_flower_entrypoint_without_any_password_refuses(tmp_path: Path) -> None:
    assert "no password" in flower_entrypoint(tmp_path).stderr


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", text)
    assert match, text
    return int(match[1]) * (60 if match[2] == "m" else 1)


def test_worker_grace_period_outlasts_the_soft_shutdown_and_one_request() -> None:
    """Docker's SIGKILL comes after the tasks in hand have finished or been handed back."""
    example = dict(re.findall(r"^([A-Z_]+)=(.*)$", (DOCKER / ".env.example").read_text(), re.M))
    soft = float(example["WORKER_SOFT_SHUTDOWN_TIMEOUT"])
    # PortOne V2's request: a 10 s connect timeout and PORTONE_TIMEOUT's read (default 60).
    portone = 10 + float(example.get("PORTONE_TIMEOUT", "60"))
    request = max(2 * float(example["IAMPORT_TIMEOUT"]), portone)
    assert _seconds(services()["worker"]["stop_grace_period"]) > soft + request


def dockerfile_stages() -> dict[str, str]:
    """Each stage's text, by its name."""
    text = (DOCKER / "Dockerfile").read_text()
    parts = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    return {re.match(r"\S+ AS (\w+)", part)[1]: part for part in parts}  # type: ignore[index]


def test_dockerfile_is_pinned_slim_non_root_from_the_lock() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", base[1]), base
    assert set(re.findall(r"^FROM (\S+)", text, re.MULTILINE)) <= {"${PYTHON_IMAGE}", "runtime"}
    images = [service["image"] for service in services().values() if "build" not in service]
    assert all(re.fullmatch(r"[\w/.-]+:\d+\.\d+\.\d+[\w.-]*", image) for image in images), images
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime", "sandbox", "flower", "worker"]  # worker: default
    assert stages["build"].count("uv sync --frozen") == 3
    assert "--require-hashes" in stages["build"]
    for name in ("sandbox", "flower", "worker"):
        stage = stages[name]
        # Only a venv from the build stage: no wheel, no sources, nothing resolved here.
        assert re.findall(r"^COPY --from=(\S+) (\S+)", stage, re.MULTILINE) == [
            ("build", f"/opt/{name}")
        ], name
        assert "pip install" not in stage and ".whl" not in stage
        assert re.search(r"^USER (?!0\b|root\b)\S+", stage, re.MULTILINE), name
        assert re.search(r"^HEALTHCHECK ", stage, re.MULTILINE), name
    assert "flower-entrypoint" in stages["flower"].split("ENTRYPOINT", 1)[1]


def test_dockerignore_keeps_secrets_and_the_run_folder_out() -> None:
    """The context is the repository: only what the Dockerfile copies goes in."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in lines  # everything out, then only what the images are built from
    included = {line[1:] for line in lines if line.startswith("!")}
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE))
    for sources in copied:
        for source in sources.split():
            assert any(
                f"{source.rstrip('/')}/".startswith(f"{item.rstrip('/')}/") for item in included
            ), source
    assert not any("pii" in item or "secret" in item or ".run" in item for item in included)


def test_readme_configuration_table_names_every_setting() -> None:
    """The README's configuration table is where operators look each setting up."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Configuration") : readme.index("### The time rule")]
    rows = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert settings_read_by_celeryconfig() - rows == set()


def test_the_rabbitmq_override_hands_the_broker_url_as_a_secret() -> None:
    """BROKER_URL_FILE, to the services that talk to the broker and no other."""
    override = yaml.safe_load((DOCKER / "broker-rabbitmq.yml").read_text())
    assert set(override["secrets"]) == {"broker_url"}
    assert set(override["services"]) == {"worker", "ingress", "flower"}
    for service in override["services"].values():
        assert service["secrets"] == ["broker_url"]
        assert service["environment"] == {"BROKER_URL_FILE": "/run/secrets/broker_url"}


def test_docker_check_validates_every_compose_file_against_the_compose_spec() -> None:
    makefile = (ROOT / "Makefile").read_text()
    listed = re.search(r"^COMPOSE_FILES := (.+)$", makefile, re.MULTILINE)
    assert listed
    assert set(listed[1].split()) == {f"docker/{path.name}" for path in DOCKER.glob("*.yml")}
    assert "check-jsonschema --builtin-schema vendor.compose-spec $(COMPOSE_FILES)" in makefile
    assert "docker-compose " not in makefile.split("docker-check:", 1)[1].split("\n\n", 1)[0]


def test_every_secret_file_is_ignored_by_git() -> None:
    """The files the README has users write into docker/ never reach a commit or an image."""
    ignored = set((ROOT / ".gitignore").read_text().splitlines())
    files = [compose(), yaml.safe_load((DOCKER / "broker-rabbitmq.yml").read_text())]
    for secrets in files:
        for secret in secrets["secrets"].values():
            default = re.fullmatch(r"\$\{\w+:-\./([\w.-]+)\}", secret["file"])
            assert default, secret
            assert f"docker/{default[1]}" in ignored
