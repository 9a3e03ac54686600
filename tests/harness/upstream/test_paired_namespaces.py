"""The real llm_datadist between two "hosts": p and d in two network namespaces joined by a veth pair.

Each side is its own ``kvtest run --backend upstream "pytest --role p|d ..."``, started by hand as on
two machines; the rendezvous and link_clusters' handshake cross the veth link. The pull_blocks cases
pass, and a byte our transport flips on the way (``KVTEST_HCCL_FAULT``) fails it on d, naming tensor
and block: the byte checks hold across the namespaces too. ``.ci/upstream-paired`` runs the whole
sample suite this way.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_two_hosts import Hosts
from test_two_hosts import two_hosts as two_hosts  # the fixture, used by name

from kvtest.upstream.cli import cached_entry

from . import require_build, upstream_env, upstream_run

ROOT = Path(__file__).resolve().parents[3]
CASE = "tests/samples/test_pull_blocks.py"
PORT = 29583


@pytest.fixture(scope="module")
def built() -> None:
    require_build(cached_entry)


def side(hosts: Hosts, role: str, tmp: Path, fault: str) -> subprocess.Popen[str]:
    ns, ip = (hosts.ns_a, hosts.ip_a) if role == "p" else (hosts.ns_b, hosts.ip_b)
    env = upstream_env(ROOT, fault, KVTEST_HCCL_DIR=str(tmp / "hccl"))
    pytest_cmd = (
        f"{sys.executable} -m pytest -p no:cacheprovider -q --backend npu --role {role} "
        f"--rendezvous tcp://{hosts.ip_a}:{PORT} --local-host-ip {ip} --kv-join-timeout 120 "
        f"{CASE}"
    )
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *upstream_run(pytest_cmd, tmp / f"logs-{role}", 300)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_pair(hosts: Hosts, tmp: Path, fault: str) -> tuple[int, int, str]:
    p = side(hosts, "p", tmp, fault)
    d = side(hosts, "d", tmp, fault)
    try:
        d_out, _ = d.communicate(timeout=360)
        p_out, _ = p.communicate(timeout=60)
    finally:
        for proc in (p, d):
            if proc.poll() is None:
                proc.kill()
    logs = "".join(f.read_text(errors="replace") for f in sorted(tmp.glob("logs-*/*.log")))
    return p.returncode, d.returncode, p_out + d_out + logs


@pytest.mark.full  # .ci/upstream runs the full lane of tests/harness/upstream; .ci/upstream-paired the suite
def test_a_pull_passes_across_two_namespaces(built: None, two_hosts: Hosts, tmp_path: Path) -> None:
    p_rc, d_rc, text = run_pair(two_hosts, tmp_path, "")
    assert (p_rc, d_rc) == (0, 0), text[-4000:]
    assert f"rendezvous tcp://{two_hosts.ip_a}:{PORT}" in text
    assert re.search(r"\b\d+ passed", text) and " failed" not in text, text[-4000:]


@pytest.mark.full
def test_a_flipped_byte_across_two_namespaces_names_tensor_and_block(
    built: None, two_hosts: Hosts, tmp_path: Path
) -> None:
    p_rc, d_rc, text = run_pair(two_hosts, tmp_path, "flip")
    assert p_rc != 0 and d_rc != 0, text[-4000:]
    assert "kvtest-hccl" in text and "flip" in text, text[-4000:]
    assert re.search(
        r"KV mismatch in [^:]+: tensor \d+ \(layer \d+, tensors_per_layer=\d+\), block \d+", text
    ), text[-4000:]
