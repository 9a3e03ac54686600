"""Local mode: start the other roles of the topology on this host, watch them, collect their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["LocalCluster"]


class LocalCluster:
    """The child processes of a local run, one per role other than p0.

    Each child's stdout and stderr go to ``<logdir>/<role>.log``. :meth:`exited` tells at once when a
    child has ended, which is how a crashed peer is reported in well under a second in local mode.
    """

    def __init__(
        self,
        logdir: Path,
        roles: Sequence[str],
        command: Callable[[str], list[str]],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.logdir = logdir
        self.roles = tuple(roles)
        self._command = command
        self._env = dict(env if env is not None else os.environ)
        self._cwd = cwd
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}
        self.finished: set[str] = set()

    def log(self, role: str) -> Path:
        return self.logdir / f"{role}.log"

    def start(self) -> None:
        self.logdir.mkdir(parents=True, exist_ok=True)
        for role in self.roles:
            log = self.log(role).open("wb")
            self._logs[role] = log
            self.procs[role] = subprocess.Popen(
                self._command(role),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env,
                cwd=self._cwd,
                start_new_session=True,
            )

    def exited(self, role: str) -> str | None:
        """None while ``role`` runs (or is not ours); else how it ended, with its log's last lines."""
        proc = self.procs.get(role)
        if proc is None or role in self.finished:
            return None
        code = proc.poll()
        if code is None:
            return None
        how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"its process (pid {proc.pid}) {how} (log: {self.log(role)})"

    def returncodes(self) -> dict[str, int | None]:
        return {role: proc.poll() for role, proc in self.procs.items()}

    def stop(self, grace: float = 20.0) -> dict[str, int | None]:
        """Wait up to ``grace`` seconds for the children to end, then kill what is left."""
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        for log in self._logs.values():
            log.close()
        return self.returncodes()
