"""The thread budget: how many torch intra-op threads each kvtest process on this host may use.

Left alone, every process's torch (and OpenMP) takes every core. A local run starts two to sixteen
role processes on one host, and pytest-xdist multiplies that by its workers, so each process's
spinning OpenMP threads fight every other's (issue 13 measured the nightly push_blocks case at
129 s on 2 cores, 23 s with one thread per process). Local mode therefore gives each process
``cores // processes on this host`` threads (at least one), and hands its children the same figure
on their command line and as ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` in their environment.
``--kv-threads N`` overrides it; a process started by hand (``--role``) keeps torch's default
unless told.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["THREAD_ENV", "ThreadBudget", "apply", "child_env", "plan", "usable_cores"]

#: variables that size the thread pools of OpenMP and the BLAS libraries torch may load
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ThreadBudget:
    """Threads per process (``None``: torch's own default) and why, for the session header."""

    threads: int | None
    why: str

    def describe(self) -> str:
        if self.threads is None:
            return f"torch threads: torch's default ({self.why})"
        return f"torch threads: {self.threads} per process ({self.why})"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def xdist_workers(env: Mapping[str, str]) -> int:
    """How many pytest-xdist workers share this host (1 without xdist)."""
    try:
        return max(1, int(env.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        return 1


def plan(
    threads: int | None,
    source: str,
    *,
    processes: int | None,
    env: Mapping[str, str] | None = None,
    cores: int | None = None,
) -> ThreadBudget:
    """The budget of one process.

    :param threads: ``--kv-threads`` (``None``: auto).
    :param source: where ``threads`` came from (``"the command line (--kv-threads)"``).
    :param processes: the kvtest processes of this run on this host, xdist workers not counted;
        ``None`` when unknown (a role started by hand).
    """
    env = os.environ if env is None else env
    if threads is not None:
        return ThreadBudget(threads, f"--kv-threads {threads} from {source}")
    omp = env.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadBudget(int(omp), f"OMP_NUM_THREADS={omp} in the environment; --kv-threads to change")
    if processes is None:
        return ThreadBudget(None, "a role started by hand; --kv-threads N to set")
    cores = usable_cores() if cores is None else cores
    workers = xdist_workers(env)
    total = processes * workers
    share = max(1, cores // total)
    count = f"{processes} processes" + (f" x {workers} xdist workers" if workers > 1 else "")
    return ThreadBudget(share, f"{cores} cores / {count} on this host; --kv-threads to change")


def apply(budget: ThreadBudget) -> None:
    """Size this process's torch intra-op pool (torch also sizes OpenMP's with it)."""
    if budget.threads is not None:
        import torch

        torch.set_num_threads(budget.threads)


def child_env(env: Mapping[str, str], budget: ThreadBudget) -> dict[str, str]:
    """``env`` with the thread pools of a child process sized to the budget."""
    out = dict(env)
    if budget.threads is not None:
        for name in THREAD_ENV:
            out[name] = str(budget.threads)
    return out
