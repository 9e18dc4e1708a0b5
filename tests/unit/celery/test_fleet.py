"""Who counts as a worker of another release at a start (worker.celery.fleet, issue 14)."""

from __future__ import annotations

from typing import Any

from worker.celery.fleet import LAYOUT_COMMAND, older_workers
from worker.core.contract import QUEUE

OURS = [{"name": QUEUE}]


class FakeControl:
    """Celery's ``app.control``: the replies each broadcast gets, round after round."""

    def __init__(self, queues: dict[str, Any], layouts: list[dict[str, Any]]) -> None:
        self.queues = queues
        self.layouts = layouts
        self.rounds = 0

    def broadcast(self, command: str, *, reply: bool, timeout: float) -> list[dict[str, Any]]:
        assert reply
        if command == "active_queues":
            return [{host: queues} for host, queues in self.queues.items()]
        assert command == LAYOUT_COMMAND
        self.rounds += 1
        found = self.layouts[min(self.rounds, len(self.layouts)) - 1]
        return [{host: answer} for host, answer in found.items()]


class FakeApp:
    def __init__(self, control: FakeControl) -> None:
        self.control = control


def test_a_worker_without_the_layout_is_older() -> None:
    """An old release answers the command with an error (kombu's reply to an unknown one)."""
    control = FakeControl(
        {"old@h": OURS, "new@h": OURS},
        [{"new@h": {"layout": 2}, "old@h": {"error": "KeyError('cashreceipt_layout')"}}],
    )
    assert older_workers(FakeApp(control), timeout=0) == ["old@h"]  # type: ignore[arg-type]
    assert control.rounds == 3


def test_a_late_layout_reply_is_asked_again() -> None:
    control = FakeControl({"new@h": OURS}, [{}, {"new@h": {"layout": 2}}])
    assert older_workers(FakeApp(control), timeout=0) == []  # type: ignore[arg-type]
    assert control.rounds == 2


def test_another_projects_worker_is_left_out_and_an_idle_one_counts() -> None:
    """A worker of another Celery app on the broker names other queues; one of ours that
    consumes nothing at the moment (starting, stopping) answers an empty list."""
    control = FakeControl({"theirs@h": [{"name": "emails"}], "stopping@h": []}, [{}])
    assert older_workers(FakeApp(control), timeout=0) == ["stopping@h"]  # type: ignore[arg-type]
