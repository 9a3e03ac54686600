"""--local-host-ip and --remote-host-ip do what the samples' flags do, on a real sample run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CASE = ["tests/samples/test_push_blocks.py", "tests/samples/test_pull_blocks.py", "-k", "fp32"]


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--kv-logs", str(tmp_path), *CASE, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.full
def test_local_host_ip_is_where_every_role_listens(tmp_path: Path):
    result = run(tmp_path, "--local-host-ip", "127.0.0.2", "--remote-host-ip", "127.0.0.2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


@pytest.mark.full
def test_remote_host_ip_is_the_address_dialled(tmp_path: Path):
    # every role listens on 127.0.0.1; dialling 127.0.0.3 instead reaches nobody: the links fail
    result = run(tmp_path, "--remote-host-ip", "127.0.0.3", "--kv-timeout", "20")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "link_clusters to p0 failed" in out  # push_blocks: d dials p at the given address
    assert "LLM_LINK_FAILED" in out


@pytest.mark.full
def test_remote_host_ip_list_must_name_the_peers(tmp_path: Path):
    result = run(tmp_path, "--remote-host-ip", "127.0.0.4,127.0.0.5", "--kv-timeout", "20")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "reports host 127.0.0.1, which is not in --remote-host-ip 127.0.0.4,127.0.0.5" in out
