"""BROKER_URL: Redis or RabbitMQ as the broker, with REDIS_URL keeping the rest."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.clean_env import python_clean

ROOT = Path(__file__).resolve().parents[3]
SHOW = """
import json, worker.celery as m
NAMES = ("broker_url", "ledger_backend_url")
from celery.app.utils import filter_hidden_settings
c = m.app.conf
queues = [(q.name, q.exchange.type, q.durable, q.queue_arguments) for q in (c.task_queues or [])]
print(json.dumps({
    "broker_url": c.broker_url,
    "redis": c.ledger_backend_url,
    "transport": c.broker_transport,
    "options": c.broker_transport_options,
    "queues": queues,
    "whole": bool(c.get("countdown_whole_seconds")),
    "censored": str(filter_hidden_settings({k: c[k] for k in NAMES})),
}))
"""


def show(**env: str) -> subprocess.CompletedProcess[str]:
    """The settings a worker starts with, given only ``env``."""
    return python_clean(SHOW, **env)


def test_without_broker_url_redis_is_the_broker_with_our_transport() -> None:
    result = show(REDIS_URL="redis://:s3cret@r:6379/2")
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["broker_url"] == conf["redis"] == "redis://:s3cret@r:6379/2"
    assert conf["transport"] == "worker.celery.transport:Transport"
    assert conf["options"]["visibility_timeout"] == 520
    assert conf["queues"] == []
    assert "s3cret" not in conf["censored"]


def test_rabbitmq_broker_gets_a_durable_quorum_queue_and_no_redis_transport() -> None:
    result = show(REDIS_URL="redis://:s3cret@r:6379/2", BROKER_URL="amqp://u:rabbitpw@mq:5672/v")
    assert result.returncode == 0, result.stderr
    conf = json.loads(result.stdout)
    assert conf["broker_url"] == "amqp://u:rabbitpw@mq:5672/v"
    assert conf["redis"] == "redis://:s3cret@r:6379/2"
    assert conf["transport"] is None
    assert "visibility_timeout" not in (conf["options"] or {})
    assert conf["queues"] == [["cash_receipts", "topic", True, {"x-queue-type": "quorum"}]]
    assert conf["whole"] is True
    # What `celery inspect conf` and Flower show: neither password.
    assert "s3cret" not in conf["censored"]
    assert "rabbitpw" not in conf["censored"]


def test_classic_queue_on_request() -> None:
    result = show(BROKER_URL="amqp://mq//", BROKER_QUEUE_TYPE="classic")
    conf = json.loads(result.stdout)
    assert conf["queues"] == [["cash_receipts", "topic", True, None]]
    assert conf["whole"] is False


def test_the_celery_command_echo_of_broker_url_is_accepted() -> None:
    """`celery` copies BROKER_URL into CELERY_BROKER_URL; only a different value is refused."""
    same = show(BROKER_URL="amqp://mq//", CELERY_BROKER_URL="amqp://mq//")
    assert same.returncode == 0, same.stderr
    other = show(BROKER_URL="amqp://mq//", CELERY_BROKER_URL="amqp://elsewhere//")
    assert other.returncode != 0
    assert "CELERY_BROKER_URL is set" in other.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_URL": "kafka://k"}, "BROKER_URL must be a redis or rediss or unix or amqp"),
        ({"BROKER_URL": "amqp://mq//", "BROKER_QUEUE_TYPE": "stream"}, "BROKER_QUEUE_TYPE must"),
        ({"BROKER_URL": "amqp://mq//?ssl=0"}, "a RabbitMQ URL takes no query options"),
        ({"BROKER_URL": "rediss://:pw@r:6380/0"}, "must say ssl_cert_reqs=required itself"),
        ({"BROKER_URL": "rediss://r/0?ssl_cert_reqs=none"}, "BROKER_URL: ssl_cert_reqs=none"),
    ],
)
def test_bad_broker_settings_stop_at_start(env: dict[str, str], message: str) -> None:
    result = show(**env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "pw@" not in result.stderr


def test_amqps_is_verified_with_the_host_name() -> None:
    code = (
        "import celeryconfig as c, ssl; "
        "print(c.broker_use_ssl == {'cert_reqs': ssl.CERT_REQUIRED, 'server_hostname': None})"
    )
    result = python_clean(code, BROKER_URL="amqps://u:p@mq:5671/v")
    assert result.stdout.strip() == "True", result.stderr
