"""The self-check: hixl's own Python unit tests (``tests/python`` of the archive, unmodified) on a build.

They run as hixl ``tests/run_test.sh`` runs them (``unittest`` over ``tests/python`` with the package on
``PYTHONPATH``), from a scratch copy so nothing is written into the cache. ``test_hixl_engine_api.py``
needs the ``hixl`` module (target ``hixl_py_stub``), which this build leaves out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvtest.upstream.cache import Entry

__all__ = ["LEFT_OUT", "Outcome", "run_upstream_tests"]

LEFT_OUT = ("test_hixl_engine_api",)  # needs the hixl module (hixl_py_stub), not built


@dataclass(frozen=True)
class Outcome:
    """What unittest said: tests run, failures+errors, skips, the modules run, and where the log is."""

    ran: int
    failed: int
    skipped: int
    modules: tuple[str, ...]
    log: Path

    @property
    def ok(self) -> bool:
        return self.ran > 0 and self.failed == 0


def run_upstream_tests(entry: Entry, log: Path, timeout: float = 900.0) -> Outcome:
    """Run every ``tests/python/test_*.py`` but :data:`LEFT_OUT` against ``entry`` and count."""
    modules = tuple(
        sorted(p.stem for p in (entry.hixl / "tests" / "python").glob("test_*.py") if p.stem not in LEFT_OUT)
    )
    with tempfile.TemporaryDirectory(prefix="kvtest-upstream-tests-") as scratch:
        copy = Path(scratch) / "hixl"
        shutil.copytree(entry.hixl / "tests" / "python", copy / "tests" / "python")
        if (entry.hixl / "scripts").is_dir():  # test_log_spec_checker reads scripts/check_log_spec.py
            shutil.copytree(entry.hixl / "scripts", copy / "scripts")
        env = {**os.environ, "PYTHONPATH": str(entry.python), "OMP_NUM_THREADS": "1"}
        env.pop("LD_PRELOAD", None)
        cmd = [sys.executable, "-m", "unittest", "-v", *(f"python.{m}" for m in modules)]
        with log.open("w") as out:
            try:
                subprocess.run(
                    cmd,
                    cwd=copy / "tests",
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                out.write(f"\nkvtest: timed out after {timeout:.0f} s\n")
    text = log.read_text(errors="replace")
    ran = re.search(r"^Ran (\d+) tests?", text, re.M)
    failures = sum(
        int(n) for n in re.findall(r"(?:failures|errors)=(\d+)", text.splitlines()[-1] if text else "")
    )
    skipped = re.search(r"skipped=(\d+)", text.splitlines()[-1] if text else "")
    if ran is None:
        failures = max(failures, 1)
    return Outcome(int(ran[1]) if ran else 0, failures, int(skipped[1]) if skipped else 0, modules, log)
