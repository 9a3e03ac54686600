"""kvtest's tests of the real llm_datadist (``kvtest upstream build``) and its transport."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from kvtest.upstream.errors import UpstreamError

T = TypeVar("T")


def require_build(get: Callable[[], T]) -> T:
    """``get()`` (the cached build, its transport): without a usable cache the test skips naming the
    command that builds it, or fails under ``KVTEST_REQUIRE_UPSTREAM=1`` (CI's upstream lane)."""
    try:
        return get()
    except UpstreamError as exc:
        if os.environ.get("KVTEST_REQUIRE_UPSTREAM") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def upstream_env(root: Path, fault: str, **extra: str) -> dict[str, str]:
    """The environment of a ``kvtest run --backend upstream`` from the checkout ``root``: one torch
    thread per role, and ``KVTEST_HCCL_FAULT=fault`` for the transport (none when empty)."""
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", **extra}
    env.pop("KVTEST_HCCL_FAULT", None)
    if fault:
        env["KVTEST_HCCL_FAULT"] = fault
    return env


def upstream_run(pytest_cmd: str, logs: Path, timeout: int) -> list[str]:
    """``kvtest run --backend upstream`` of one pytest command line, its logs in ``logs``."""
    return [sys.executable, "-m", "kvtest.cli", "run", "--backend", "upstream", "--timeout", str(timeout),
            "--fail-on", "", "--logs", str(logs), pytest_cmd]
