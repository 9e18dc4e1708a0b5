"""A rolling deploy across the key layout change (issue 14): one worker of each release.

The old worker is the release before layout 2 (:data:`OLD_RELEASE`, pinned: CI runs on
a full clone of main), extracted with ``git archive`` and started from its own tree
with this environment's Python, as an operator would start it. The rule under test
(README, Rolling deploys): a worker of this release refuses to start while a worker
that does not answer with its layout answers a ping; once the old one is stopped, the
new one migrates at its start, and the job the old one parked in layout 1 is re-sent
and issued by the new one, exactly once.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from tests.support.redis_server import RedisServer
from tests.support.results import ResultStream
from tests.support.sandbox import Sandbox, running_sandbox
from tests.support.wait import wait_for
from tests.support.worker import (
    ROOT,
    TEST_PII_KEY,
    ProcessOutput,
    producer_app,
    running_worker,
    unready_worker,
    worker_env,
)
from worker.adapters.store.keys import LAYOUT_1, LAYOUT_KEY, ledger_key
from worker.core.contract import ISSUE_TASK, QUEUE

pytestmark = pytest.mark.integration
#: main just before layout 2 (660b8d9's parent): the last release of layout 1.
OLD_RELEASE = "c419ba6d0637b11748cbb9902dc52658fd3028da"
#: The old worker's job parks this long: past the new worker's refusal and the old one's stop.
RETRY_AFTER = 12


@pytest.fixture(scope="module")
def old_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old release's tree, from git."""
    tree = tmp_path_factory.mktemp("old-release")
    archive = subprocess.run(
        ["git", "archive", OLD_RELEASE], cwd=ROOT, capture_output=True, check=True, timeout=60
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True, timeout=60)
    return tree


@pytest.fixture
def own_sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as sandbox:
        yield sandbox


def old_worker(tree: Path, env: Mapping[str, str]) -> AbstractContextManager[ProcessOutput]:
    """``python -m celery -A worker worker`` of the old release, from its tree, until ready."""
    return running_worker(
        {**env, "PYTHONPATH": str(tree)},
        command=[
            sys.executable,
            *("-m", "celery", "-A", "worker", "worker", "--loglevel", "INFO"),
            *("-n", f"old-{uuid.uuid4().hex[:8]}@%h"),
        ],
        tree=tree,
    )


def test_a_new_worker_starts_only_after_the_old_ones_and_issues_their_parked_job(
    own_redis: RedisServer, own_sandbox: Sandbox, old_release: Path
) -> None:
    env = worker_env(
        own_redis.url,
        own_sandbox.url,
        RETRY_BACKOFF_MAX="60",
        RETRY_COUNTDOWN_MAX="0.3",
        SWEEP_INTERVAL="0.2",
    )
    client = own_redis.client()
    results = ResultStream(client)
    imp_uid = f"imp_{uuid.uuid4().hex[:12]}"
    own_sandbox.script(
        imp_uid, {"kind": "rate_limit", "retry_after": RETRY_AFTER, "method": "POST"}
    )
    producer = producer_app(own_redis.url)
    payload = {"imp_uid": imp_uid, "identifier": "01055554321"}

    with old_worker(old_release, env):
        # A bare send_task: only the old worker writes the ledger. It parks the job in
        # layout 1's due index, with no message left.
        task_id = producer.send_task(ISSUE_TASK, args=[payload], queue=QUEUE).id
        wait_for(
            lambda: (
                client.hget(ledger_key(imp_uid), "state") == "received"
                and client.zscore(LAYOUT_1.due_key, imp_uid) is not None
            ),
            timeout=20,
            message="the old worker to park the job in layout 1",
        )
        with unready_worker(env) as (process, output):
            process.wait(timeout=30)
        assert process.returncode != 0
        assert "refusing to start" in output.text
        assert "old-" in output.text.partition("refusing to start")[2]
        # It took no message and moved no key.
        assert client.get(LAYOUT_KEY) is None
        assert client.zscore(LAYOUT_1.due_key, imp_uid) is not None
        assert results.for_task(task_id) == []

    with running_worker(env) as new:
        event = results.wait(task_id, timeout=RETRY_AFTER + 30)
        # A second worker of this release starts beside the first: it answers the layout.
        with running_worker(env):
            pass
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert "migrated the Redis keys to layout 2" in new.text
    assert client.get(LAYOUT_KEY) == "2"
    assert not client.exists(LAYOUT_1.due_key)
    assert own_sandbox.issued_count(imp_uid) == 1
    assert [r["status"] for r in own_sandbox.requests(imp_uid) if r["method"] == "POST"] == [
        429,
        200,
    ]
    assert len(results.for_task(task_id)) == 1
    producer.close()


#: What an older producer does with the helper: record the job in the ledger (layout 1),
#: then send its message, here lost on the way (it is never sent).
OLD_PRODUCER = """
import sys
from celery import Celery
from worker.adapters.privacy.sealing import Sealer
from worker.celery.producer import _ledger
from worker.core.schemas import load_payload

url, key, imp_uid, task_id = sys.argv[1:]
app = Celery("checkout", broker=url)
app.conf.pii_encryption_keys = [key]
sealer = Sealer.from_conf(app.conf)
message = load_payload({"imp_uid": imp_uid, "identifier": "01055554321"}, sealer).to_message(
    sealer
)
print(_ledger(app).receive(imp_uid, task_id=task_id, payload=message, resend_after=1))
"""


def test_an_older_producers_lost_message_is_re_sent_by_a_new_worker(
    own_redis: RedisServer, own_sandbox: Sandbox, old_release: Path
) -> None:
    """Producers are upgraded after the workers: until then an older one records its jobs
    in layout 1's due index, which every sweep folds into layout 2's, so the sweeper
    still re-sends a job whose message was lost."""
    env = worker_env(own_redis.url, own_sandbox.url, SWEEP_INTERVAL="0.2")
    client = own_redis.client()
    results = ResultStream(client)
    imp_uid, task_id = f"imp_{uuid.uuid4().hex[:12]}", str(uuid.uuid4())
    with running_worker(env) as new:
        wait_for(lambda: client.get(LAYOUT_KEY) == "2", timeout=10, message="the layout")
        recorded = subprocess.run(
            [sys.executable, "-c", OLD_PRODUCER, own_redis.url, TEST_PII_KEY, imp_uid, task_id],
            cwd=old_release,
            env={**env, "PYTHONPATH": str(old_release)},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert recorded.stdout.strip() == "received", recorded.stderr
        event = results.wait(task_id, timeout=30)
    assert (event["type"], event["data"]["duplicate"]) == ("cash_receipt.issued", False)
    assert own_sandbox.issued_count(imp_uid) == 1
    assert not client.exists(LAYOUT_1.due_key)
    assert "refusing" not in new.text
