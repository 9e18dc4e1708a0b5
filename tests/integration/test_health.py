"""The ingress container's health check: healthy while an ingress of this host reads its stream."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
