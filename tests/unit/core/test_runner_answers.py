"""What a run says the provider last answered (its outcome line): the provider's words."""

from __future__ import annotations

from tests.support.memory import MemoryProvider
from tests.support.runners import World
from worker.core.errors import ProviderUnavailable
from worker.core.outcome import Outcome
from worker.core.runner import Done, Retry


class OtherProvider(MemoryProvider):
    """A provider whose clean answer is not i'mport's 200 with code 0."""

    name = "other"
    clean_answer = (201, None)


def test_a_clean_answer_is_reported_as_the_provider_says_it() -> None:
    world = World(provider=OtherProvider)
    world.provider.pay("imp_1")
    runner = world.issue_runner("t1")
    assert runner.run() == Done(Outcome.ISSUED)
    assert (runner.provider_status, runner.provider_code) == (201, None)


def test_an_error_is_reported_with_its_status_and_code() -> None:
    world = World()
    world.provider.pay("imp_1")
    world.provider.fail_next("POST", ProviderUnavailable("busy", status=503, code=-1))
    runner = world.issue_runner("t1")
    assert isinstance(runner.run(), Retry)
    assert (runner.provider_status, runner.provider_code) == (503, -1)
