"""Issue 4's proof that the sample suite's byte checks fail when they should.

For each transfer API, one sample test runs with ``KVTEST_SIM_FAULT=flip@<api>`` (the sim corrupts
one byte of what that API moves) and must fail with a mismatch report naming tensor, layer and block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "tests" / "samples"

FLIPS = [
    ("pull_cache", "test_pull_cache.py"),
    ("pull_blocks", "test_pull_blocks.py"),
    ("pull_blocks", "test_pull_from_cache_to_blocks.py"),
    ("swap_blocks", "test_pull_blocks.py"),
    ("push_blocks", "test_push_blocks.py"),
    ("push_cache", "test_push_cache.py"),
    ("transfer_cache_async", "test_transfer_cache_async.py"),
]


def run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kv-logs", str(tmp_path / "logs"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, **(env or {})},
    )


def first_case(path: Path, tmp_path: Path) -> str:
    listed = run(["--collect-only", "-q", str(path)], tmp_path)
    ids = [line for line in listed.stdout.splitlines() if "::" in line and "[" in line]
    assert ids, listed.stdout + listed.stderr
    return ids[0]


@pytest.mark.parametrize(("api", "sample"), FLIPS, ids=[f"{a}-{s[:-3]}" for a, s in FLIPS])
def test_flipped_byte_fails_with_block_report(api: str, sample: str, tmp_path: Path):
    nodeid = first_case(SAMPLES / sample, tmp_path)
    result = run([nodeid], tmp_path, env={"KVTEST_SIM_FAULT": f"flip@{api}"})
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert re.search(r"KV mismatch in [pd]\d .*: tensor \d+ \(layer \d+, tensors_per_layer=\d+\), block \d+ of \d+", out), out
    assert re.search(r"first difference: byte \d+ of block \d+", out), out
    assert re.search(r"expected: [0-9a-f]{2}( [0-9a-f]{2})*", out), out
    assert re.search(r"actual: +[0-9a-f]{2}( [0-9a-f]{2})*", out), out


def test_without_the_fault_the_same_case_passes(tmp_path: Path):
    nodeid = first_case(SAMPLES / "test_push_blocks.py", tmp_path)
    result = run([nodeid], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
