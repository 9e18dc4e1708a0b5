"""The ``cashreceipt`` command line as click parses it (no Redis needed): options, --version."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import pytest

import worker.cli.ingress
from worker.cli import cli, main


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What ``cashreceipt ingress`` asks the ingress to run with (it runs nothing)."""
    calls: list[dict[str, Any]] = []

    def serve(**options: Any) -> int:
        calls.append(options)
        return 1

    monkeypatch.setattr(worker.cli.ingress, "serve", serve)
    return calls


def test_ingress_defaults(served: list[dict[str, Any]]) -> None:
    """No option: hostname-pid as the consumer, run until stopped, 2 s reads."""
    assert main(["ingress"]) == 1  # the ingress's own exit code
    assert served == [{"consumer": None, "once": False, "block_ms": 2000}]


def test_ingress_options(served: list[dict[str, Any]]) -> None:
    assert main(["ingress", "--consumer", "web-1", "--once", "--block-ms", "200"]) == 1
    assert served == [{"consumer": "web-1", "once": True, "block_ms": 200}]


@pytest.mark.parametrize("argv", [["--block-ms", "soon"], ["--bogus"], ["extra"]])
def test_ingress_usage_error_exits_2(
    served: list[dict[str, Any]], argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ingress", *argv]) == 2
    assert served == []
    assert "Error:" in capsys.readouterr().err


@pytest.mark.parametrize("block_ms", ["0", "-5"])
def test_ingress_block_ms_below_1_is_a_usage_error(
    served: list[dict[str, Any]], block_ms: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused by click, before the ingress (and its settings) is reached: exit 2."""
    assert main(["ingress", "--block-ms", block_ms]) == 2
    assert served == []
    err = capsys.readouterr().err
    assert "Error: Invalid value for '--block-ms'" in err
    assert f"{block_ms} is not in the range x>=1." in err


def test_ingress_block_ms_of_1_is_taken(served: list[dict[str, Any]]) -> None:
    assert main(["ingress", "--block-ms", "1"]) == 1
    assert served == [{"consumer": None, "once": False, "block_ms": 1}]


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(cli.commands))])
def test_every_command_has_version(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``cashreceipt --version`` and ``cashreceipt CMD --version`` print the package's version
    and exit 0, before any required argument is missed or any setting read."""
    assert main([*command, "--version"]) == 0
    assert capsys.readouterr() == (f"cashreceipt {version('cashreceipt')}\n", "")
