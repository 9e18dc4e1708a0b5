"""Step runners one port call at a time, in an order the test chooses.

Each runner (any callable: a :class:`~worker.core.runner.JobRunner`'s ``run``,
or a loop around it) runs in a thread of its own. Every call it makes on a
gated port (:meth:`Stepper.gated`) first stops at a gate and waits there; the
test lets one runner through at a time (:meth:`Stepper.step`), and the runner
then runs alone until it reaches its next gate or ends. So only one thread
touches the ports at any moment, and a schedule (a list of runner names) is
replayed exactly: hypothesis can draw one, and shrink it when it fails.

    stepper = Stepper()
    store, provider = stepper.gated("store", store), stepper.gated("provider", provider)
    stepper.start("a", runner_a.run)
    stepper.start("b", runner_b.run)
    stepper.waiting()            # {"a": store.claim(...), "b": store.claim(...)}
    stepper.play(["a", "b", "b", "a"])
    stepper.drain()              # the rest, round robin, to the end
    stepper.result("a")

Every wait is bounded (``timeout``): a runner that blocks anywhere but at a
gate fails the test instead of hanging it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

_T = TypeVar("_T")


@dataclass(frozen=True)
class PortCall:
    """A call a runner is about to make, or made: ``port.method(*args, **kwargs)``."""

    runner: str
    port: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.runner}: {self.port}.{self.method}"


class StepperError(AssertionError):
    """The schedule cannot go on: a runner is not where the test said, or blocked elsewhere."""


class Abandoned(BaseException):
    """Raised in a runner's thread at its gate once the test abandoned it: its process died.

    A BaseException, so that no ``except Exception`` of the code under test catches it:
    the port call it waited to make is never made, and nothing after it runs.
    """


@dataclass
class _Runner:
    name: str
    go: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0))
    state: str = "running"  # running, waiting (at a gate), done
    abandoned: bool = False
    pending: PortCall | None = None
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread | None = None


class Stepper:
    """Runs runners in threads; lets one through its next gate at a time."""

    def __init__(self, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._cond = threading.Condition()
        self._runners: dict[str, _Runner] = {}
        #: The runners by their thread's name.
        self._by_thread: dict[str, _Runner] = {}
        #: Every call let through, in order.
        self.trace: list[PortCall] = []

    # -- wiring --------------------------------------------------------------------------

    def gated(self, name: str, port: _T, *, ungated: Iterable[str] = ()) -> _T:
        """``port``, whose every public method first waits at this stepper's gate.

        Calls from a thread the stepper did not start pass straight through (the
        test's own set-up and assertions). ``ungated`` methods always do.
        """
        return cast(_T, _GatedPort(self, name, port, frozenset(ungated)))

    def start(self, name: str, run: Callable[[], Any]) -> None:
        """Start ``run`` in a thread of its own; returns once it waits at its first gate."""
        if name in self._runners:
            raise StepperError(f"a runner {name!r} exists already")
        runner = _Runner(name)

        def body() -> None:
            try:
                runner.result = run()
            except BaseException as error:  # noqa: BLE001 (handed to the test by result())
                runner.error = error
            finally:
                with self._cond:
                    runner.state, runner.pending = "done", None
                    self._cond.notify_all()

        thread = threading.Thread(target=body, name=f"runner-{name}", daemon=True)
        runner.thread = thread
        with self._cond:
            self._runners[name] = runner
            self._by_thread[thread.name] = runner
        thread.start()
        self._settle(runner)

    # -- driving -------------------------------------------------------------------------

    def waiting(self) -> dict[str, PortCall]:
        """The runners waiting at a gate, and the call each is about to make."""
        with self._cond:
            return {r.name: r.pending for r in self._runners.values() if r.pending is not None}

    def step(self, name: str) -> PortCall:
        """Let ``name`` make its pending call; returns once it waits again, or ended."""
        runner = self._runners[name]
        with self._cond:
            if runner.state != "waiting" or runner.pending is None:
                raise StepperError(f"runner {name!r} is {runner.state}, not at a gate")
            call = runner.pending
            runner.state, runner.pending = "running", None
            self.trace.append(call)
        runner.go.release()
        self._settle(runner)
        return call

    def abandon(self, name: str) -> PortCall:
        """Crash ``name`` at its gate: the call it waits to make is never made.

        Its thread ends at once (:class:`Abandoned`, raised at the gate), as a
        worker process killed there would: what it held (a claim, a lease) stays
        as it was, for the store's own rules to take over.
        """
        runner = self._runners[name]
        with self._cond:
            if runner.state != "waiting" or runner.pending is None:
                raise StepperError(f"runner {name!r} is {runner.state}, not at a gate")
            call = runner.pending
            runner.abandoned = True
            runner.state = "running"
        runner.go.release()
        self._settle(runner)
        return call

    def abandoned(self, name: str) -> bool:
        """Whether ``name`` was crashed by :meth:`abandon`."""
        return self._runners[name].abandoned

    def play(self, schedule: Iterable[str]) -> list[PortCall]:
        """Step the runners in this order; a name whose runner has ended is skipped.

        Skipping (instead of failing) keeps every schedule valid, so hypothesis can
        draw any list of names and shrink it freely.
        """
        return [self.step(name) for name in schedule if self.is_waiting(name)]

    def drain(self, *, limit: int = 10_000) -> None:
        """Step every runner still waiting, round robin, until all have ended."""
        for _ in range(limit):
            names = sorted(self.waiting())
            if not names:
                return
            for name in names:
                if self.is_waiting(name):
                    self.step(name)
        raise StepperError(f"runners still waiting after {limit} rounds: {sorted(self.waiting())}")

    def is_waiting(self, name: str) -> bool:
        with self._cond:
            return self._runners[name].state == "waiting"

    def done(self, name: str) -> bool:
        with self._cond:
            return self._runners[name].state == "done"

    def result(self, name: str) -> Any:
        """What ``name``'s run returned; what it raised is raised here."""
        runner = self._runners[name]
        if runner.state != "done":
            raise StepperError(f"runner {name!r} has not ended ({runner.state})")
        if runner.error is not None:
            raise runner.error
        return runner.result

    def close(self) -> None:
        """Let every runner still waiting run to its end (after a failed test, too)."""
        try:
            self.drain()
        finally:
            for runner in self._runners.values():
                if runner.thread is not None:
                    runner.thread.join(self.timeout)

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the gate ------------------------------------------------------------------------

    def _gate(self, port: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with self._cond:
            runner = self._by_thread.get(threading.current_thread().name)
            if runner is None:
                return  # the test's own thread: not gated
            if runner.abandoned:  # a crashed runner's clean-up reaches no port either
                raise Abandoned(f"{runner.name} crashed before {port}.{method}")
            runner.pending = PortCall(runner.name, port, method, args, dict(kwargs))
            runner.state = "waiting"
            self._cond.notify_all()
        if not runner.go.acquire(timeout=self.timeout):
            raise StepperError(f"runner {runner.name!r} was never let through {port}.{method}")
        if runner.abandoned:
            raise Abandoned(f"{runner.name} crashed before {port}.{method}")

    def _settle(self, runner: _Runner) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: runner.state != "running", timeout=self.timeout):
                raise StepperError(
                    f"runner {runner.name!r} neither reached a gate nor ended "
                    f"within {self.timeout} s: blocked outside the ports?"
                )


class _GatedPort:
    """A port whose public methods wait at the stepper's gate before they run."""

    def __init__(self, stepper: Stepper, name: str, port: Any, ungated: frozenset[str]) -> None:
        self._stepper, self._name, self._port, self._ungated = stepper, name, port, ungated

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._port, attr)
        if attr.startswith("_") or attr in self._ungated or not callable(value):
            return value

        def gated(*args: Any, **kwargs: Any) -> Any:
            self._stepper._gate(self._name, attr, args, kwargs)
            return value(*args, **kwargs)

        return gated
