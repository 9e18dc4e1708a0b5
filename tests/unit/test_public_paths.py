"""The import paths producers rely on keep working after the layers moved (issue 13).

A producer's code says ``from worker.producer import enqueue_issue`` and catches
``worker.schemas.InvalidPayload``; those paths are a contract like the task names,
whichever layer holds the code today.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from celery.app.utils import find_app

from worker.adapters.privacy import sealing
from worker.celery import app, producer, queues
from worker.core import contract, ports, schemas

PUBLIC = [
    ("worker.producer", "enqueue_issue", producer.enqueue_issue),
    ("worker.producer", "enqueue_cancel", producer.enqueue_cancel),
    ("worker.schemas", "InvalidPayload", schemas.InvalidPayload),
    ("worker.sealing", "SealingUnavailable", sealing.SealingUnavailable),
    ("worker.sealing", "UnsealError", ports.UnsealError),
    ("worker.contract", "ISSUE_TASK", contract.ISSUE_TASK),
    ("worker.contract", "CANCEL_TASK", contract.CANCEL_TASK),
    ("worker.contract", "QUEUE", contract.QUEUE),
    ("worker.contract", "rabbitmq_queues", queues.rabbitmq_queues),
]


@pytest.mark.parametrize(("module", "name", "owner"), PUBLIC)
def test_public_path_is_the_layers_object(module: str, name: str, owner: object) -> None:
    assert getattr(importlib.import_module(module), name) is owner


def test_ingress_and_queue_declaration_keep_their_paths() -> None:
    ingress = importlib.import_module("worker.ingress")
    assert callable(ingress.task_id_for)
    queues = importlib.import_module("worker.contract").rabbitmq_queues()
    assert [queue.name for queue in queues] == [contract.QUEUE]


def test_celery_finds_the_app_as_operators_name_it() -> None:
    """``celery -A worker`` resolves to the one app (Celery's own lookup)."""
    assert find_app("worker") is app


def test_python_m_worker_ingress_points_at_the_console_script() -> None:
    """``python -m worker.ingress`` once started the ingress; it must not exit 0 doing nothing."""
    result = subprocess.run(
        [sys.executable, "-m", "worker.ingress"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stdout) == (2, "")
    assert "run `cashreceipt ingress`" in result.stderr


@pytest.mark.parametrize(
    "module", ["worker.contract", "worker.producer", "worker.schemas", "worker.sealing"]
)
def test_a_public_path_is_a_pure_re_export(module: str) -> None:
    """The import-linter layers skip these modules as re-exports: they must hold no code.

    ``worker.contract`` once declared the RabbitMQ queue itself (kombu, outside every
    layer); the code is in ``worker.celery.queues`` now.
    """
    path = Path(importlib.import_module(module).__file__ or "")
    body = ast.parse(path.read_text(encoding="utf-8")).body
    code = [
        ast.unparse(node).partition("\n")[0]
        for node in body[1:]
        if not isinstance(node, ast.ImportFrom)
        and not (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["__all__"]
        )
    ]
    assert code == []
