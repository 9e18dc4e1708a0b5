"""Sweeper.stop runs in a signal handler, and a second signal can re-enter it."""

from __future__ import annotations

import threading
from typing import Any, cast

from worker.adapters.store.sweeper import Sweeper


class _FakeRedis:
    def register_script(self, _script: str) -> None:
        return None


def test_stop_re_entered_inside_event_set_returns() -> None:
    """A second shutdown signal arriving while the first holds Event.set's lock."""
    sweeper = Sweeper(
        ledger=cast(Any, None), client=cast(Any, _FakeRedis()), send=print, interval=1
    )

    class InterruptedEvent(threading.Event):
        """set() that, holding its lock, runs stop() again, as a signal handler would."""

        re_entered = False

        def set(self) -> None:
            with self._cond:  # type: ignore[attr-defined]
                if not self.re_entered:
                    self.re_entered = True
                    sweeper.stop()
                self._flag = True  # type: ignore[attr-defined]
                self._cond.notify_all()  # type: ignore[attr-defined]

    sweeper._stop = InterruptedEvent()
    stopping = threading.Thread(target=sweeper.stop, daemon=True)
    stopping.start()
    stopping.join(timeout=5)
    assert not stopping.is_alive(), "stop() deadlocked on Event.set's lock when re-entered"
    assert sweeper._stop.is_set()
