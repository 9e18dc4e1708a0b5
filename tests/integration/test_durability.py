"""The worker and the ingress refuse a Redis that may lose what it acknowledged (issue 14, 7).

Both are started as compose starts them, against a Redis of each test's own, with
``REDIS_DURABILITY`` at its default (``require``) unless the test says otherwise:
the rest of the suite accepts the risk in ``worker_env``, since its Redis runs
without AOF. A refused start exits non-zero before taking any message, with one
line that names the setting and its fix.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.ingress import INGRESS, running_ingress
from tests.support.redis_server import RedisServer
from tests.support.sandbox import Sandbox
from tests.support.worker import ROOT, running_worker, worker_argv, worker_env

pytestmark = pytest.mark.integration

PROCESSES = ["worker", "ingress"]
#: Exit codes of a refused start: the worker's SystemExit, `cashreceipt`'s configuration error.
REFUSED = {"worker": 1, "ingress": 2}
NOT_CHECKED = "appendfsync is not checked: CONFIG GET appendfsync cannot be read"


def _env(url: str, sandbox: Sandbox, policy: str = "require") -> dict[str, str]:
    return worker_env(url, sandbox.url, REDIS_DURABILITY=policy)


def _refused(kind: str, env: dict[str, str]) -> str:
    """Start ``kind``; it must exit by itself, with the refusal's code. Its output."""
    command = worker_argv() if kind == "worker" else INGRESS
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=40, check=False
        )
    except subprocess.TimeoutExpired as running:
        pytest.fail(f"the {kind} did not refuse to start:\n{running.stdout!r}")
    text = result.stdout + result.stderr
    assert result.returncode == REFUSED[kind], text
    assert " ready." not in text
    assert "ingress ready" not in text
    return text


@contextmanager
def _started(kind: str, env: dict[str, str]) -> Iterator[str]:
    """``kind`` once ready; what it printed until then."""
    if kind == "worker":
        with running_worker(env) as output:
            yield output.text
    else:
        with running_ingress(env) as (_, output):
            yield output.text


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_redis_without_aof_is_refused(
    kind: str, own_redis: RedisServer, sandbox: Sandbox
) -> None:
    text = _refused(kind, _env(own_redis.url, sandbox))
    assert "cashreceipt: refusing to start: the Redis at redis://cashreceipt:**@" in text
    assert "appendonly is no (INFO aof_enabled:0)" in text
    assert "fix: run Redis with appendonly yes and appendfsync always" in text
    assert "set REDIS_DURABILITY=accept-risk" in text
    assert own_redis.password not in text


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_durable_redis_is_accepted(kind: str, aof_redis: RedisServer, sandbox: Sandbox) -> None:
    """AOF and noeviction: it starts. The stack's ACL denies CONFIG GET on purpose, so
    appendfsync is not read: a warning, documented, never a refusal."""
    with _started(kind, _env(aof_redis.url, sandbox)) as text:
        assert "refusing" not in text
        assert "REDIS_DURABILITY=accept-risk" not in text
        assert NOT_CHECKED in text
        assert "no permissions to run the 'config|get' command" in text


@pytest.mark.parametrize("kind", PROCESSES)
def test_a_user_allowed_config_get_has_appendfsync_checked(
    kind: str, aof_redis: RedisServer, sandbox: Sandbox
) -> None:
    """With CONFIG GET allowed, appendfsync always passes silently, and everysec refuses."""
    env = _env(aof_redis.admin_url, sandbox)
    with _started(kind, env) as text:
        assert "appendfsync" not in text
        assert "REDIS_DURABILITY" not in text
    aof_redis.client().config_set("appendfsync", "everysec")
    text = _refused(kind, env)
    assert "appendfsync is everysec" in text
    assert "fix: appendfsync always" in text


@pytest.mark.parametrize("kind", PROCESSES)
def test_an_evicting_redis_is_refused(kind: str, aof_redis: RedisServer, sandbox: Sandbox) -> None:
    aof_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    text = _refused(kind, _env(aof_redis.url, sandbox))
    assert "maxmemory-policy is allkeys-lru" in text
    assert "fix: maxmemory-policy noeviction" in text
    assert "appendonly" not in text


@pytest.mark.parametrize("kind", PROCESSES)
def test_accepting_the_risk_starts_with_a_warning(
    kind: str, own_redis: RedisServer, sandbox: Sandbox
) -> None:
    own_redis.client().config_set("maxmemory-policy", "volatile-lru")
    with _started(kind, _env(own_redis.url, sandbox, "accept-risk")) as text:
        assert "WARNING: REDIS_DURABILITY=accept-risk: the Redis at redis://cashreceipt:**@" in text
        assert "starting on a Redis that may lose what it acknowledged" in text
        assert "appendonly is no" in text
        assert "maxmemory-policy is volatile-lru" in text
        assert "refusing" not in text


@pytest.mark.parametrize("kind", PROCESSES)
def test_info_that_cannot_be_read_refuses(
    kind: str, aof_redis: RedisServer, sandbox: Sandbox
) -> None:
    """A user that may not run INFO: nothing can be checked, so it counts as not durable."""
    admin = aof_redis.client()
    admin.acl_setuser(
        "noinfo",
        enabled=True,
        passwords=["+pw"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-info"],
    )
    url = aof_redis.admin_url.replace(f"harness:{aof_redis.admin_password}@", "noinfo:pw@")
    try:
        text = _refused(kind, _env(url, sandbox))
    finally:
        admin.acl_log_reset()  # the denials were meant
    assert "INFO cannot be read (" in text
    assert "no permissions to run the 'info' command" in text
