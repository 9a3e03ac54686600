from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

#: KVTEST_HARNESS_FULL=1 (CI's .ci/run) runs the full lane too: every test marked ``full``
FULL = os.environ.get("KVTEST_HARNESS_FULL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default loop leaves out the full lane (tests marked ``full``: the whole fault matrices and
    the costly end-to-end runs whose area a cheaper default test already covers); KVTEST_HARNESS_FULL=1
    keeps them, and so does a ``-m`` expression that names ``full`` (``-m full``: the full lane only).
    Deselected, not skipped: the default run's summary counts only what it ran."""
    if FULL or "full" in (config.option.markexpr or "").split():
        return
    keep, left = [], []
    for item in items:
        (left if item.get_closest_marker("full") else keep).append(item)
    if left:
        config.hook.pytest_deselected(items=left)
        items[:] = keep


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not FULL and "full" not in (config.option.markexpr or "").split():
        terminalreporter.write_line(
            "kvtest harness: the default loop; the full lane (tests marked full) runs with "
            "KVTEST_HARNESS_FULL=1 pytest tests/harness -n 2 (as CI does) -- docs/contributing.md"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Finished:
    returncode: int
    output: str
    seconds: float


class Proc:
    """A pytest process of one role, started in a pytester directory, with a hard deadline."""

    def __init__(self, cwd: Path, args: list[str], name: str, env: dict[str, str] | None = None) -> None:
        self.log = cwd / f"{name}.out"
        self.start = time.monotonic()
        self._fh = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
            cwd=cwd, stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
        )

    def wait(self, timeout: float = 90) -> Finished:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.log.name} did not end within {timeout}s (a hang):\n{self.log.read_text()}")
        finally:
            self._fh.close()
        return Finished(self.proc.returncode, self.log.read_text(errors="replace"), time.monotonic() - self.start)


@pytest.fixture
def start_role(pytester: pytest.Pytester):
    procs: list[Proc] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(pytester.path, list(args), name, env)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.proc.poll() is None:
            proc.proc.kill()
            proc.proc.wait()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(autouse=True)
def _no_xdist_worker_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under ``pytest -n`` a worker's PYTEST_XDIST_* variables would reach the pytest runs a test starts,
    and kvtest would divide their thread budget by workers they are not: each test starts its runs as a
    plain ``pytest`` would."""
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
