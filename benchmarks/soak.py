"""Soak: run the sample suite N times in local mode and count passes, failures, hangs, mismatches.

    python benchmarks/soak.py N [--deadline S] [pytest args...]

Each run is a fresh ``python -m pytest tests/samples -p no:cacheprovider`` with a per-run deadline
(default 600 s). A run that hits it is a hang (its process group is killed); a run whose output
mentions ``KVMismatch`` counts as a mismatch. Exits non-zero when any run did not pass.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(index: int, deadline: float, extra: list[str], logdir: Path) -> tuple[str, float, bool]:
    """(outcome, seconds, mismatch) of one run; outcome is passed, failed or hang."""
    log = logdir / f"run-{index:03d}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "tests/samples", "-p", "no:cacheprovider", *extra],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=deadline)
            outcome = "passed" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            outcome = "hang"
    mismatch = "KVMismatch" in log.read_text(errors="replace")
    return outcome, time.monotonic() - start, mismatch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="how many runs")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds one run may take")
    parser.add_argument("--logs", type=Path, default=ROOT / "kvtest-logs" / "soak")
    args, extra = parser.parse_known_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    counts = {"passed": 0, "failed": 0, "hang": 0}
    mismatches = 0
    for i in range(args.n):
        outcome, seconds, mismatch = one_run(i, args.deadline, extra, args.logs)
        counts[outcome] += 1
        mismatches += mismatch
        print(
            f"run {i + 1}/{args.n}: {outcome}{' (KVMismatch)' if mismatch else ''} in {seconds:.1f}s",
            flush=True,
        )
    print(
        f"soak: {args.n} runs: {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['hang']} hangs (deadline {args.deadline:g}s), {mismatches} mismatches; logs in {args.logs}"
    )
    return 0 if counts["passed"] == args.n else 1


if __name__ == "__main__":
    sys.exit(main())
