"""The sample suite's byte checks catch a fault in OUR transport under the real llm_datadist: a flipped
byte or a dropped block in HcclBatchGet (``KVTEST_HCCL_FAULT``) fails ``test_pull_blocks`` naming tensor
and block, while the same case passes without the fault.

Runs ``kvtest run --backend upstream "pytest --backend npu ..."`` on this host; the npu backend wants a
non-loopback host IP for a two-sided link, so the host's first global IPv4 address stands for the NIC.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvtest.upstream.cli import cached_entry

from . import require_build, upstream_env, upstream_run

ROOT = Path(__file__).resolve().parents[3]
CASE = "tests/samples/test_pull_blocks.py"


def _host_ip() -> str | None:
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "scope", "global"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return found[1] if found else None


@pytest.fixture(scope="module")
def lane() -> tuple[str, str]:
    require_build(cached_entry)
    ip = _host_ip()
    if ip is None:
        pytest.skip(
            "no global IPv4 address on this host to stand for the NIC (run .ci/upstream: a namespace)"
        )
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", CASE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    # a case whose blocks are not contiguous, so the pull is a batch of several descriptors
    first = next(line for line in collected.splitlines() if "::test_pull_blocks[fp16-blocks(0,3,5)" in line)
    return ip, first


def run_case(lane: tuple[str, str], tmp_path: Path, fault: str) -> subprocess.CompletedProcess[str]:
    ip, node = lane
    env = upstream_env(ROOT, fault)
    pytest_cmd = (
        f"{sys.executable} -m pytest -p no:cacheprovider -q --backend npu --local-host-ip {ip} '{node}'"
    )
    return subprocess.run(
        upstream_run(pytest_cmd, tmp_path / "logs", 400),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=460,
        check=False,
    )


def test_the_case_passes_without_a_fault(lane: tuple[str, str], tmp_path: Path) -> None:
    done = run_case(lane, tmp_path, "")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout


@pytest.mark.parametrize("fault", [pytest.param("flip", marks=pytest.mark.full), "drop"])
def test_a_transport_fault_fails_the_case_naming_tensor_and_block(
    lane: tuple[str, str], tmp_path: Path, fault: str
) -> None:
    done = run_case(lane, tmp_path, fault)
    text = done.stdout + done.stderr
    assert done.returncode != 0, text[-4000:]
    assert re.search(
        r"KV mismatch in [^:]+: tensor \d+ \(layer \d+, tensors_per_layer=\d+\), block \d+", text
    ), text[-4000:]
