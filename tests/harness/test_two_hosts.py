"""Paired hosts for real: p and d in two network namespaces joined by a veth pair.

Each role is started by hand as on two machines (``pytest --role p`` / ``pytest --role d`` with one
rendezvous address); host addresses come from the rendezvous connection, and UCX is forced onto TCP
so the KV bytes cross the veth link. The namespaces are this test's own and are removed after it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and iproute2 to make network namespaces",
)


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[str, str, str, str]]:
    tag = f"{os.getpid() % 100000}"
    a, b = f"kvt-a{tag}", f"kvt-b{tag}"
    ip_a, ip_b = "10.231.7.1", "10.231.7.2"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"kva{tag}", "type", "veth", "peer", "name", f"kvb{tag}")
        sh("ip", "link", "set", f"kva{tag}", "netns", a)
        sh("ip", "link", "set", f"kvb{tag}", "netns", b)
        for ns, dev, addr in ((a, f"kva{tag}", ip_a), (b, f"kvb{tag}", ip_b)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, ip_a, b, ip_b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def start(ns: str, role: str, rdv: str, tmp: Path, *selection: str) -> subprocess.Popen[str]:
    cmd = [
        "ip",
        "netns",
        "exec",
        ns,
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "--role",
        role,
        "--rendezvous",
        rdv,
        "--kv-logs",
        str(tmp / "logs"),
        "--basetemp",
        str(tmp / f"{role}-tmp"),
        "--kv-join-timeout",
        "60",
        *selection,
    ]
    env = {**os.environ, "UCX_TLS": "tcp"}
    return subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


SELECTION = [
    "tests/samples/test_push_blocks.py",  # one-sided link_clusters, push
    "tests/samples/test_pull_blocks.py",  # two-sided link through a two-server rank table, pull
    "tests/samples/test_push_cache.py",
    "-k",
    "fp32",
]


def test_sample_flows_across_two_hosts(two_hosts, tmp_path: Path):
    ns_a, ip_a, ns_b, ip_b = two_hosts
    rdv = f"tcp://{ip_a}:29531"
    p = start(ns_a, "p", rdv, tmp_path, *SELECTION)
    d = start(ns_b, "d", rdv, tmp_path, *SELECTION)
    try:
        p_out, _ = p.communicate(timeout=240)
        d_out, _ = d.communicate(timeout=60)
    finally:
        for proc in (p, d):
            if proc.poll() is None:
                proc.kill()
    assert p.returncode == 0, p_out
    assert d.returncode == 0, d_out
    assert f"topology 1p1d (rendezvous {rdv})" in p_out
    assert "3 passed" in p_out and "3 passed" in d_out


def test_rendezvous_is_not_reachable_on_other_addresses(two_hosts, tmp_path: Path):
    # p0 hosts on its loopback only: the d host cannot join through the veth address
    ns_a, ip_a, ns_b, _ = two_hosts
    p = start(
        ns_a,
        "p",
        "tcp://127.0.0.1:29532",
        tmp_path,
        "tests/samples/test_push_blocks.py",
        "-k",
        "fp32",
        "--kv-join-timeout",
        "8",
    )
    d = start(
        ns_b,
        "d",
        f"tcp://{ip_a}:29532",
        tmp_path,
        "tests/samples/test_push_blocks.py",
        "-k",
        "fp32",
        "--kv-join-timeout",
        "5",
    )
    d_out, _ = d.communicate(timeout=60)
    p_out, _ = p.communicate(timeout=60)
    assert d.returncode == 4 and f"could not reach the rendezvous tcp://{ip_a}:29532" in d_out, d_out
    assert p.returncode == 4 and "d0 did not join" in p_out, p_out
