"""docker/redis/users.acl on a durable Redis: what the ACL user writes survives a restart.

Redis replays its append-only file as the default user and re-checks each
MULTI/EXEC against that user's permissions (redis/redis#14541). An ACL whose
default user may run nothing loses every transaction and every Lua script's
writes at the next restart, silently: kombu's unacked index, the ledger.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from tests.support.redis_server import running_redis

pytestmark = pytest.mark.integration


def test_transactions_and_scripts_survive_a_restart(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", appendonly=True) as server:
        app = redis.Redis.from_url(server.url, decode_responses=True)
        with app.pipeline(transaction=True) as pipe:
            pipe.hset("acl:unacked", "tag", "message").zadd("acl:index", {"tag": 1.0})
            pipe.execute()
        app.eval("redis.call('SET', KEYS[1], ARGV[1])", 1, "acl:ledger", "claimed")
        app.close()
        server.stop()
        server.start()
        admin = server.client()
        assert admin.hget("acl:unacked", "tag") == "message"
        assert admin.zscore("acl:index", "tag") == 1.0
        assert admin.get("acl:ledger") == "claimed"
        # And the default user still lets nobody in.
        anonymous = redis.Redis(port=server.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, username="default", password="").ping()
