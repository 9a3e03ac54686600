"""torchrun starts the same ``pytest`` on every rank; kvtest takes each rank's role from it.

The sample tests run for real (sim backend, bytes through NIXL), every worker joins torchrun's
agent store, and torchrun's exit status is the run's verdict.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ONE_P_ONE_D = "tests/samples/test_pull_blocks.py::test_pull_blocks[fp16-blocks(0,3,5)->(7,1,2)-layers[1:2]->[0:1]]"
TWO_P = "tests/samples/test_pull_blocks_xpyd.py"


def torchrun(tmp_path: Path, nproc: int, *pytest_args: str, timeout: float = 240) -> tuple[int, str]:
    log = tmp_path / "torchrun.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTEST_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                "-m", "pytest", "-p", "no:cacheprovider", "-rA", *pytest_args,
            ],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            pytest.fail(f"torchrun did not end within {timeout}s (a hang):\n{log.read_text(errors='replace')[-4000:]}")
    return code, log.read_text(errors="replace")


def test_torchrun_two_processes_run_1p1d(tmp_path: Path) -> None:
    code, out = torchrun(tmp_path, 2, ONE_P_ONE_D)
    assert code == 0, out[-4000:]
    assert "kvtest: torchrun: rank 0 of 2 -> p0 (topology 1p1d), rendezvous: torchrun's agent store at" in out
    assert "PASSED " + ONE_P_ONE_D in out and "p0 passed, d0 passed" in out


@pytest.mark.full
def test_torchrun_four_processes_run_2p2d(tmp_path: Path) -> None:
    code, out = torchrun(tmp_path, 4, TWO_P, ONE_P_ONE_D, "--topology", "2p2d")
    assert code == 0, out[-4000:]
    assert "kvtest: torchrun: rank 0 of 4 -> p0 (topology 2p2d)" in out
    assert "p0 passed, p1 passed, d0 passed" in out  # a 2p1d test
    for role in ("p1", "d0", "d1"):
        assert f"kvtest: {role}: torch threads" in out


@pytest.mark.full
def test_a_world_size_that_is_not_the_topology_stops_every_rank_with_exit_4(tmp_path: Path) -> None:
    code, out = torchrun(tmp_path, 2, ONE_P_ONE_D, "--topology", "2p1d", timeout=120)
    assert code != 0
    errors = [line for line in out.splitlines() if line.startswith("ERROR: kvtest: torchrun runs 2 processes")]
    # each rank says it in one line, unless torchrun stopped it (SIGTERM) once the other had exited 4
    terminated = out.count("(SIGTERM)")
    assert len(errors) + terminated >= 2 and errors, out[-4000:]
    assert "has 3 roles; start 3 processes or give --topology 1p1d" in errors[0]
    assert "exitcode  : 4" in out or "exitcode: 4" in out, out[-3000:]
    # torchrun prints its own ChildFailedError traceback; none may come from kvtest
    assert not re.search(r'File "[^"]*/kvtest/[^"]*"', out), out[-3000:]
