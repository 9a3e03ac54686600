"""Waiting for a state in kvtest's own tests: poll it with a deadline, never sleep a guessed time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 60) -> None:
    """Poll ``ready()`` until it is true: a state the test waits for, never a guessed sleep."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port`` (a store that is up)."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False
