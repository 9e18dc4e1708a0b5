"""Cancelling a task stops only that task, only in the thread that runs it."""

from __future__ import annotations

import threading

from worker.celery import stopping


def test_only_the_cancelled_task_stops_and_only_in_its_own_thread() -> None:
    """check() raises for the cancelled task's thread; other tasks and threads go on."""
    seen: dict[str, bool] = {}

    def run(task_id: str) -> None:
        with stopping.running(task_id):
            try:
                stopping.check()
            except stopping.HandedBack:
                seen[task_id] = True
            else:
                seen[task_id] = False

    stopping.cancel("t-1")
    threads = [threading.Thread(target=run, args=(t,)) for t in ("t-1", "t-2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"t-1": True, "t-2": False}
    stopping.check()  # no task in this thread: nothing to stop
    # Once its run ended the mark is gone: a redelivery of t-1 here runs normally.
    run("t-1")
    assert seen["t-1"] is False
