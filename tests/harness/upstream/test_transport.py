"""Two processes move bytes through the REAL llm_datadist C++ (built by ``kvtest upstream build``) and
kvtest's HCCL transport, byte-checked; a flipped byte and a dropped block in the transport are caught.

Without a built cache these skip (naming the command that builds it); ``KVTEST_REQUIRE_UPSTREAM=1``
(set by ``.ci/upstream``) turns that skip into a failure.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kvtest.dropin.environment import shim_root
from kvtest.upstream import transport
from kvtest.upstream.cache import Entry
from kvtest.upstream.cli import cached_entry

from . import require_build

PAIR = Path(__file__).with_name("pair.py")
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def upstream() -> tuple[Entry, Path]:
    entry = require_build(cached_entry)
    return entry, require_build(lambda: transport.ensure(entry, lambda _text: None))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_pair(upstream: tuple[Entry, Path], folder: Path, fault: str = "") -> dict[str, object]:
    entry, library = upstream
    _site, bin_dir = shim_root(folder / "shims")  # kvtest's hccn_tool: the real code asks it for device IPs
    env = {**os.environ, **transport.environment(entry, library, folder / "hccl"), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.pop(transport.ENV_FAULT, None)
    if fault:
        env[transport.ENV_FAULT] = fault
    (folder / "hccl").mkdir()
    port = _free_port()
    procs = {
        side: subprocess.Popen(
            [sys.executable, str(PAIR), side, str(port), str(folder)],
            env=env,
            stdout=(folder / f"{side}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for side in ("p", "d")
    }
    try:
        codes = {side: proc.wait(TIMEOUT_S) for side, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    logs = {side: (folder / f"{side}.log").read_text(errors="replace")[-3000:] for side in procs}
    assert codes == {"p": 0, "d": 0}, f"exit codes {codes}\n--- p\n{logs['p']}\n--- d\n{logs['d']}"
    result: dict[str, object] = json.loads((folder / "d.json").read_text())
    result["logs"] = logs
    return result


def test_pull_blocks_moves_the_right_bytes_between_two_processes(
    upstream: tuple[Entry, Path], tmp_path: Path
) -> None:
    result = run_pair(upstream, tmp_path)
    assert result["wrong"] == [], result
    assert result["checked_bytes"] == 2 * 4 * 1024


@pytest.mark.parametrize("fault", ["flip", "drop"])
def test_a_transport_fault_is_caught_naming_tensor_and_block(
    upstream: tuple[Entry, Path], tmp_path: Path, fault: str
) -> None:
    result = run_pair(upstream, tmp_path, fault)
    wrong = result["wrong"]
    assert isinstance(wrong, list) and len(wrong) == 1, result
    assert wrong[0]["block"] in (0, 2) and wrong[0]["offset"] == 0, result
    logs = result["logs"]
    # in this link mode p answers d's pull request by putting the blocks into d (one batch per pull)
    assert isinstance(logs, dict) and "kvtest-hccl" in logs["p"] and "fault:" in logs["p"], logs
