"""The two ways the sandbox says no, kept apart from the modules that raise them."""

from __future__ import annotations


class InvalidInput(ValueError):
    """Admin or CLI input the sandbox refuses; the message goes back to the caller as is."""


class Refusal(Exception):
    """An i'mport answer other than success, raised from deep in a check and caught once."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
