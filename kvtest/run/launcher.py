"""Local mode: start the other roles of the topology on this host, watch them, collect their logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO

import pytest

from kvtest.roles.topology import Topology
from kvtest.run.threads import ThreadBudget, child_env
from kvtest.settings import OPTIONS, Rendezvous, Settings

__all__ = ["LocalCluster", "child_arguments", "child_command", "start_roles"]


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


_PASS_WITH_VALUE = {
    "-p",
    "-o",
    "--override-ini",
    "-c",
    "--config-file",
    "--rootdir",
    "--confcutdir",
    "--import-mode",
    "-W",
    "--pythonwarnings",
    "-m",
    "-k",
}
_PASS_FLAGS = {"--noconftest", "-v", "--verbose", "-q", "--quiet"}
_CHILD_SETTINGS = (
    "backend",
    "profile",
    "seed",
    "timeout",
    "dead_after",
    "join_timeout",
    "sync_kv_timeout",
    "device_ids",
    "local_host_ip",
    "remote_host_ips",
    "artifacts",  # each child writes its own folder under it
)


def child_arguments(config: pytest.Config, settings: Settings) -> list[str]:
    """The arguments a local child role needs to collect what p0 collected with p0's settings."""
    out: list[str] = []
    args = list(config.invocation_params.args)
    i = 0
    while i < len(args):
        arg = str(args[i])
        name = arg.split("=", 1)[0]
        if name in _PASS_WITH_VALUE:
            if "=" in arg or i + 1 >= len(args):
                out.append(arg)
            else:
                out += [arg, str(args[i + 1])]
                i += 1
        elif arg in _PASS_FLAGS or (arg.startswith("-p") and len(arg) > 2 and not arg.startswith("--")):
            out.append(arg)
        i += 1
    by_dest = {o.dest: o for o in OPTIONS}
    for dest in _CHILD_SETTINGS:
        value = getattr(settings, dest)
        if value in (None, ()):
            continue
        text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        out += [by_dest[dest].flag, text]
    return out + [str(a) for a in config.args]


def child_command(
    config: pytest.Config, settings: Settings, role: str, topology: Topology, rdv: Rendezvous, run_id: str,
    logdir: Path, threads: int | None = None,
) -> list[str]:
    """The command line that starts ``role`` as a follower of this run on this host."""
    side, rank = role[0], role[1:]
    return [
        sys.executable,
        "-m",
        "pytest",
        *child_arguments(config, settings),
        *(["--kv-threads", str(threads)] if threads is not None else []),
        "--role",
        side,
        "--rank",
        rank,
        "--topology",
        str(topology),
        "--rendezvous",
        str(rdv),
        "--run-id",
        run_id,
        "--basetemp",
        str(logdir / f"{role}-tmp"),
        "-p",
        "no:cacheprovider",
    ]


def _own_device(settings: Settings, device_of: dict[str, int], role: str) -> Settings:
    """``settings`` with ``role``'s own device only: the child runs with --role, where a list would be
    one id per rank of that role instead of one per role of the local topology."""
    if role not in device_of:
        return settings
    return replace(settings, device_ids=(device_of[role],))


def start_roles(
    config: pytest.Config,
    settings: Settings,
    me: str,
    topology: Topology,
    rdv: Rendezvous,
    run_id: str,
    secrets: Mapping[str, str] | None = None,
    budget: ThreadBudget | None = None,
) -> LocalCluster:
    """Start every role of ``topology`` but ``me`` on this host, logging into ``<logs>/<run_id>``.

    ``secrets`` go to the children in the environment, never in argv (which ``ps`` shows everyone).
    With a ``budget`` each child gets its threads on the command line and in its environment.
    """
    logdir = (settings.logs / run_id).resolve()
    others = [r for r in topology.roles if r != me]
    device_of = settings.local_device_ids(topology.roles)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for option in OPTIONS:
        env.pop(option.env, None)  # the command line carries every resolved setting
    env.update(secrets or {})
    threads = None
    if budget is not None:
        env = child_env(env, budget)
        threads = budget.threads
    cluster = LocalCluster(
        logdir,
        others,
        lambda role: child_command(
            config, _own_device(settings, device_of, role), role, topology, rdv, run_id, logdir, threads
        ),
        env,
        config.invocation_params.dir,
    )
    cluster.start()
    return cluster
