"""The rule for a fleet that mixes releases across a change of the key layout (issue 14).

A worker of layout 1 and one of layout 2 must never run together: each reads the
indexes and side keys where the other does not write them, so a job the older one
parks is never re-sent by the newer one's sweeper, and a waiter one records the other
never ends. So a worker of this release advertises its layout in a remote-control
command of its own (``cashreceipt_layout``), and refuses to start while any worker
that answers a Celery ping does not answer that command with this layout: an older
release does not know the command. The first worker to start after the last old one
stopped migrates (:mod:`worker.adapters.store.layout`), before it takes a message.

The ping sees the workers that answer within the timeout, and one that answered it is
asked its layout up to three times. One that still has not answered with this layout
counts as another release's: a doubt refuses the start (try again), and never lets two
layouts run at once. A worker whose ping reply is late is not seen at all: stop the
old release before starting the new one, and this check is what catches a mistake.

The start asks in a child interpreter (:func:`ask_the_fleet`), never in the worker's
main process: a broadcast there, before the prefork pool forks, left one child that
never took a task (kombu's pidbox state outlived it; even a second Celery app did not
help), so a worker of concurrency N ran one task at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from celery import Celery
from celery.worker.control import inspect_command
from kombu.exceptions import OperationalError

from worker.adapters.store.keys import LAYOUT_VERSION
from worker.config.load import load_celeryconfig
from worker.core.contract import QUEUE

#: The remote-control command a worker of this release answers with its key layout.
LAYOUT_COMMAND = "cashreceipt_layout"
#: How long the start waits for the fleet's answers, in seconds (both asked at once).
FLEET_PING_TIMEOUT = 1.0
#: How many times a worker that answered the ping is asked its layout before it counts
#: as another release's.
FLEET_PING_ROUNDS = 3
#: How long the child interpreter that asks may take in all (its start included).
FLEET_CHECK_DEADLINE = 60.0


class FleetUnknown(Exception):
    """The fleet could not be asked: the broker did not answer, or the child failed."""


@inspect_command(name=LAYOUT_COMMAND)
def cashreceipt_layout(state: Any, **_: Any) -> dict[str, int]:
    """This worker's key layout, for a worker of a later release deciding whether to start."""
    return {"layout": LAYOUT_VERSION}


def older_workers(
    app: Celery, *, timeout: float = FLEET_PING_TIMEOUT, rounds: int = FLEET_PING_ROUNDS
) -> list[str]:
    """The workers that answer a ping but not with this layout: another release's.

    A worker that answered the ping but whose layout came too late is asked again, up
    to ``rounds`` times in all: on a busy host a reply may miss one window. A worker of
    another release never answers, so only it costs the rounds. The workers asked are
    those that answer ``active_queues`` (every Celery worker does, like a ping) and may
    consume this project's queue.
    """
    answered: set[str] = set()
    current: set[str] = set()
    for _ in range(rounds):
        with ThreadPoolExecutor(max_workers=2) as pool:
            pings = pool.submit(app.control.broadcast, "active_queues", reply=True, timeout=timeout)
            layouts = pool.submit(
                app.control.broadcast, LAYOUT_COMMAND, reply=True, timeout=timeout
            )
            answered |= {
                host
                for reply in pings.result() or []
                for host, queues in reply.items()
                if _may_consume(queues)
            }
            current |= {
                host
                for reply in layouts.result() or []
                for host, answer in reply.items()
                if isinstance(answer, dict) and answer.get("layout") == LAYOUT_VERSION
            }
        if not answered - current:
            return []
    return sorted(answered - current)


def _may_consume(queues: object) -> bool:
    """Whether a worker's answer to ``active_queues`` may be a worker of this project.

    A Celery app of another project on the same broker answers too, with its own
    queues: it is not counted. A worker of ours that consumes nothing at this moment
    (starting, or stopping while its tasks end) answers an empty list, and counts.
    """
    if not isinstance(queues, list) or not queues:
        return True
    return any(isinstance(queue, dict) and queue.get("name") == QUEUE for queue in queues)


def refusal(older: list[str]) -> str:
    """What a worker says when it will not start beside workers of another layout."""
    return (
        f"cashreceipt: refusing to start: {len(older)} worker(s) of another release still "
        f"answer ({', '.join(older)}), and do not keep the Redis keys in this release's "
        f"layout {LAYOUT_VERSION}. Stop them all, then start this release, which migrates "
        "the keys at its start (README: Rolling deploys)"
    )


def ask_the_fleet(app: Celery, *, deadline: float = FLEET_CHECK_DEADLINE) -> list[str]:
    """:func:`older_workers`, asked by a child interpreter on this app's broker.

    The broker URL goes to the child on its stdin (never argv, which ``ps`` shows), the
    rest of the configuration from the environment both share. Raises FleetUnknown when
    the answer is missing: a doubt refuses the start.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", f"import sys; from {__name__} import main; sys.exit(main())"],
            input=json.dumps({"broker_url": app.conf.broker_url}),
            capture_output=True,
            text=True,
            timeout=deadline,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FleetUnknown(f"no answer within {deadline:g} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise FleetUnknown(lines[-1] if lines else f"the check exited {done.returncode}")
    older = json.loads(done.stdout)
    if not isinstance(older, list) or not all(isinstance(host, str) for host in older):
        raise FleetUnknown(f"unreadable answer: {done.stdout[:200]!r}")
    return older


def main() -> int:
    """The child's side: print the older workers as JSON, or say why it could not ask."""
    # A bare app on the worker's own settings (celeryconfig: its transport, its options),
    # and the broker its parent was given.
    app = Celery("cashreceipt-fleet-check", set_as_current=False)
    app.config_from_object(load_celeryconfig())
    app.conf.broker_url = json.load(sys.stdin)["broker_url"]
    try:
        older = older_workers(app)
    except OperationalError as error:
        print(f"the broker did not answer ({error})", file=sys.stderr)
        return 3
    finally:
        app.close()
    print(json.dumps(older))
    return 0
