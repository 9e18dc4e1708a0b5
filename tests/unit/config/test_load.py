"""load_celeryconfig: a bad setting stops an entry point with one line, anything else raises."""

from __future__ import annotations

import pytest

from worker.config import ConfigError, load


class _NarrowerConfigError(ConfigError):
    """A ConfigError by kind, whatever its class is called."""


def _raising(error: Exception) -> object:
    def import_module(name: str) -> object:
        assert name == "celeryconfig"
        raise error

    return import_module


@pytest.mark.parametrize(
    "error", [ConfigError("BAD must be 1"), _NarrowerConfigError("BAD must be 1")]
)
def test_a_config_error_exits_with_its_message(
    monkeypatch: pytest.MonkeyPatch, error: ConfigError
) -> None:
    monkeypatch.setattr(load.importlib, "import_module", _raising(error))
    with pytest.raises(SystemExit) as stopped:
        load.load_celeryconfig()
    assert stopped.value.code == "cashreceipt: configuration error: BAD must be 1"


def test_another_value_error_is_a_bug_and_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load.importlib, "import_module", _raising(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        load.load_celeryconfig()
