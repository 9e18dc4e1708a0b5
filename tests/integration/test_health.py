"""The compose stack's health checks, against a Redis with the stack's ACL.

The ingress container's check is healthy while an ingress of this host reads its
stream; the Redis container's logs in as the ACL user with the password from its
secret file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ingress import running_ingress
from tests.support.redis_server import RedisServer
from tests.support.worker import ROOT, worker_env

pytestmark = pytest.mark.integration
HEALTH = [sys.executable, "-m", "worker.health", "ingress"]


def health(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        HEALTH, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
    )


def test_ingress_health_follows_the_ingress(tmp_path: Path) -> None:
    """Unhealthy with no ingress, healthy while one runs, unhealthy again once it stopped."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        env = worker_env(server.url, "http://127.0.0.1:1")
        before = health(env)
        assert before.returncode == 1
        assert "no ingress of this host" in before.stderr
        with running_ingress(env):
            during = health(env)
            assert during.returncode == 0, during.stderr
        assert health(env).returncode == 1
        server.stop()
        down = health(env)
        assert down.returncode == 1
        assert "unhealthy: Redis" in down.stderr
    finally:
        server.stop()


def test_ingress_and_its_health_check_read_redis_url_from_a_file(tmp_path: Path) -> None:
    """REDIS_URL_FILE (the redis_url secret), with the ACL user's URL, as compose runs them."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        secret = tmp_path / "redis_url"
        secret.write_text(f"{server.url}\n", encoding="utf-8")
        env = worker_env(server.url, "http://127.0.0.1:1")
        del env["REDIS_URL"]
        env["REDIS_URL_FILE"] = str(secret)
        with running_ingress(env):
            during = health(env)
            assert during.returncode == 0, during.stderr
            # This Redis, from the file: its consumer group is here.
            groups = server.client().xinfo_groups("payment.events")
            assert [group["name"] for group in groups] == ["cashreceipt-ingress"]
        assert server.denied() == []
    finally:
        server.stop()


def test_ingress_health_exits_1_on_a_bad_setting(tmp_path: Path) -> None:
    """A configuration error is unhealthy with its one line, no traceback: exit 1, since
    Docker's health checks reserve 2."""
    env = worker_env("redis://127.0.0.1:1/0", "http://127.0.0.1:1")
    env["REDIS_URL_FILE"] = str(tmp_path / "redis_url")
    checked = health(env)
    assert checked.returncode == 1, checked.stderr
    assert checked.stderr.strip() == (
        "cashreceipt: configuration error: set REDIS_URL or REDIS_URL_FILE, not both"
    )


def redis_health(port: int, password_file: Path) -> subprocess.CompletedProcess[str]:
    """docker-compose.yml's Redis health check, pointed at ``port`` and ``password_file``."""
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    kind, command = compose["services"]["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    command = command.replace("$$", "$").replace("/run/secrets/redis_password", str(password_file))
    command = command.replace("redis-cli ", f"redis-cli -p {port} ", 1)
    return subprocess.run(
        ["sh", "-c", command], capture_output=True, text=True, timeout=30, check=False
    )


def test_redis_health_check_logs_in_as_the_acl_user(tmp_path: Path) -> None:
    """PONG as cashreceipt with the secret's password; a wrong one, or none, is unhealthy."""
    server = RedisServer(tmp_path / "redis", password="the-stack-password")
    server.start()
    try:
        secret = tmp_path / "redis_password"
        secret.write_text("the-stack-password\n", encoding="utf-8")
        assert redis_health(server.port, secret).returncode == 0
        secret.write_text("another-password\n", encoding="utf-8")
        assert redis_health(server.port, secret).returncode != 0
        # No default user: without logging in, not even PING.
        anonymous = subprocess.run(
            ["redis-cli", "-p", str(server.port), "ping"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "PONG" not in anonymous.stdout
    finally:
        server.stop()
