"""Proof that the tests of the APIs no sample reaches (tests/samples/test_cache_apis.py,
test_transfer_apis.py) fail when they should.

- Byte checks: with ``KVTEST_SIM_FAULT=flip@<api>`` the sim corrupts one byte of what that API moved;
  every test using the API must fail at a ``check ...`` step with a KV mismatch report.
- Other checks (a refusal, a status code, a key that must or must not survive): a deliberate sim bug
  (``tests/harness/plugins/kvtest_sim_bugs.py``, loaded into every role) breaks the real behaviour the
  test guards, and the test must fail.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = Path(__file__).resolve().parent / "plugins"
CACHE = "tests/samples/test_cache_apis.py"
TRANSFER = "tests/samples/test_transfer_apis.py"

#: fault -> the tests whose byte checks it must break (every smoke case of each)
FLIPS = {
    "flip@copy_cache": [f"{CACHE}::test_copy_cache"],
    "flip@copy_blocks": [f"{CACHE}::test_copy_blocks"],
    "flip@pull_blocks": [f"{TRANSFER}::test_allocate_blocks_cache", f"{TRANSFER}::test_mix_role"],
    "flip@transfer_cache_async": [
        f"{TRANSFER}::test_transfer_cache_async_block_indices",
        f"{TRANSFER}::test_transfer_cache_async_to_blocks",
        f"{TRANSFER}::test_transfer_cache_async_by_id",
        f"{TRANSFER}::test_transfer_cache_async_raw_addrs",
    ],
    "flip@pull_cache": [
        f"{TRANSFER}::test_pull_cache_by_id",
        f"{TRANSFER}::test_pull_cache_prefix",
        f"{TRANSFER}::test_pull_cache_host",
    ],
    "flip@push_blocks": [f"{TRANSFER}::test_mix_role"],
}

#: deliberate bug -> (test, what its failure must say)
BUGS = {
    "copy-unchecked": (f"{CACHE}::test_copy_refusals", "DID NOT RAISE"),
    "timeout-ignored": (f"{TRANSFER}::test_sync_kv_timeout", "DID NOT RAISE"),
    "prefix-consumed": (f"{TRANSFER}::test_pull_cache_prefix", "LLM_KV_CACHE_NOT_EXIST"),
    "dealloc-keeps-key": (f"{TRANSFER}::test_allocate_blocks_cache", "DID NOT RAISE"),
    "host-to-host": (f"{TRANSFER}::test_pull_cache_host", "DID NOT RAISE"),
}


def run(args: list[str], tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kv-logs", str(tmp_path / "logs"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )


def summary_lines(out: str, nodeid: str) -> list[str]:
    """kvtest's per-test summary lines (``OUTCOME  nodeid  p0 ..., d0 ...``) of every case of ``nodeid``."""
    pattern = re.compile(rf"(PASSED|FAILED|ERROR)  +{re.escape(nodeid)}(\[| )")
    return [line for line in out.splitlines() if pattern.match(line)]


#: the rows the default loop runs (one byte check, one other check); the rest in the full lane
DEFAULT_FLIP, DEFAULT_BUG = "flip@pull_blocks", "prefix-consumed"


def rows(table: dict, default: str) -> list:
    return [key if key == default else pytest.param(key, marks=pytest.mark.full) for key in sorted(table)]


@pytest.mark.parametrize("fault", rows(FLIPS, DEFAULT_FLIP))
def test_flip_fails_every_byte_check(fault: str, tmp_path: Path) -> None:
    nodeids = sorted(set(FLIPS[fault]))
    result = run(nodeids, tmp_path, {"KVTEST_SIM_FAULT": fault})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    for nodeid in nodeids:
        lines = summary_lines(out, nodeid)
        assert lines, f"no summary line for {nodeid}:\n{out}"
        for line in lines:
            assert line.startswith("FAILED") and re.search(r"failed at ['\"]check ", line), f"{fault}: {line}\n{out}"
    assert re.search(r"KV mismatch in [pd]\d .*: tensor \d+ \(layer \d+, tensors_per_layer=\d+\), block \d+", out)


@pytest.mark.parametrize("bug", rows(BUGS, DEFAULT_BUG))
def test_deliberate_bug_fails_its_test(bug: str, tmp_path: Path) -> None:
    nodeid, says = BUGS[bug]
    path = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)
    env = {"KVTEST_SIM_BUG": bug, "PYTEST_PLUGINS": "kvtest_sim_bugs", "PYTHONPATH": path}
    result = run([nodeid], tmp_path, env)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    lines = summary_lines(out, nodeid)
    assert lines and any(line.startswith("FAILED") for line in lines), out
    assert says in out, out

