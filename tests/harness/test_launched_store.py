"""A launcher's rank 0 hosts the store even when it is not p0 (role map ``p=1 d=0``).

The roles are started as LeaderWorkerSet pods see it (LWS_* variables only); the store lives in
d0's process. It must outlive p0's last read, and a death on either side is named fast.
"""

from __future__ import annotations

from typing import Any

import pytest
from waits import listening, wait_until

SUITE = """
import os, signal

def test_exchange(kv):
    kv.step("exchange")
    kv.publish("hello", kv.me)
    for peer in kv.peers:
        assert kv.fetch(peer, "hello") == peer
    kv.barrier("end")

def test_exchange_again(kv):
    kv.step("again")
    kv.barrier("again")

def test_one_dies(kv):
    kv.step("push")
    if kv.role == os.environ["DIES"]:
        os.kill(os.getpid(), signal.SIGKILL)
    kv.barrier("after push")
"""


def lws(index: int, port: int, **extra: str) -> dict[str, str]:
    """A LeaderWorkerSet pod's variables, with the store at a free port on the leader pod."""
    # LWS_LEADER_ADDRESS is what every pod of the group gets; 127.0.0.1 stands for the leader pod
    return {
        "LWS_LEADER_ADDRESS": "127.0.0.1",
        "LWS_GROUP_SIZE": "2",
        "LWS_WORKER_INDEX": str(index),
        "KVTEST_ROLE_MAP": "p=1 d=0",
        "KVTEST_RENDEZVOUS": f"tcp://127.0.0.1:{port}",
        **extra,
    }


def start_pods(pytester: pytest.Pytester, start_role, port: int, select: str, **extra: str) -> tuple[Any, Any]:
    """Rank 0 (d0, the store's host) and, half a second later, rank 1 (p0), each running ``-k select``."""
    pytester.makepyfile(test_launched=SUITE)
    host = start_role("rank0", "-v", "-k", select, env=lws(0, port, **extra))
    wait_until(lambda: listening(port), "rank 0's store")
    return host, start_role("rank1", "-v", "-k", select, env=lws(1, port, **extra))


@pytest.mark.full
def test_rank0_is_d0_and_hosts_the_store_until_p0_is_done(pytester: pytest.Pytester, start_role, port: int):
    host, other = start_pods(pytester, start_role, port, "not dies")
    p0, d0 = other.wait(), host.wait()
    assert p0.returncode == 0, p0.output
    assert d0.returncode == 0, d0.output
    assert "kvtest: LeaderWorkerSet: rank 1 of 2 -> p0" in p0.output
    assert "kvtest: LeaderWorkerSet: rank 0 of 2 -> d0" in d0.output
    assert "test_exchange_again PASSED" in p0.output


@pytest.mark.full
def test_the_store_hosts_death_is_named_by_p0(pytester: pytest.Pytester, start_role, port: int):
    host, other = start_pods(pytester, start_role, port, "dies", DIES="d")
    p0 = other.wait(timeout=60)
    host.wait()
    assert p0.returncode == pytest.ExitCode.TESTS_FAILED, p0.output
    assert "test_one_dies FAILED" in p0.output
    assert "d0" in p0.output and ("died" in p0.output or "is gone" in p0.output), p0.output
    assert p0.seconds < 40, p0.output


@pytest.mark.full
def test_p0s_death_is_named_by_the_store_host(pytester: pytest.Pytester, start_role, port: int):
    host, other = start_pods(pytester, start_role, port, "dies", DIES="p")
    d0 = host.wait(timeout=60)
    other.wait()
    assert d0.returncode == pytest.ExitCode.TESTS_FAILED, d0.output
    assert "p0" in d0.output and ("dead" in d0.output or "died" in d0.output), d0.output
    assert d0.seconds < 40, d0.output
