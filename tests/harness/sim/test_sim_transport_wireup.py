"""The first transfer to a peer sets its connection up before sync_kv_timeout starts to count.

UCX wires an endpoint up on its first use, in round trips the peer's progress thread answers; on a loaded
host that took more than the whole 1000 ms of a sample's tiny push, and the sim reported LLM_TIMEOUT where
the real llm_datadist, whose connection is set up in link_clusters, does not. Here the peer is a process
held stopped (SIGSTOP) for a while across the first transfer.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import torch

from kvtest.backends.sim import transport
from kvtest.backends.sim.status import LLMStatusCode
from kvtest.backends.sim.transport import TransferError, Transport, next_version

PEER = """
import base64, ctypes, json, sys
from kvtest.backends.sim.transport import Transport
buf = ctypes.create_string_buffer(bytes(range(256)) * 4)
t = Transport(sys.argv[1])
t.register([(ctypes.addressof(buf), 1024)])
print("PEER " + json.dumps({"meta": base64.b64encode(t.metadata()).decode(), "addr": ctypes.addressof(buf),
                  "probe": t.probe_address}), flush=True)
sys.stdin.read()
t.close()
"""


@pytest.fixture
def peer() -> Iterator[tuple[subprocess.Popen[str], str, dict[str, object]]]:
    name = f"kvtest-wireup-{uuid.uuid4().hex[:8]}"
    proc = subprocess.Popen(
        [sys.executable, "-c", PEER, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = next(x for x in proc.stdout if x.startswith("PEER "))  # NIXL logs to stdout too
        yield proc, name, json.loads(line[5:])
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.communicate(timeout=30)


@pytest.fixture
def reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[Transport]:
    monkeypatch.setattr(transport, "_idle_agents", [])
    t = Transport(f"kvtest-wireup-{uuid.uuid4().hex[:8]}")
    try:
        yield t
    finally:
        t.close()


def stopped_for(pid: int, seconds: float) -> threading.Timer:
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    timer.start()
    return timer


@pytest.mark.parametrize("with_probe", [True, False], ids=["probe", "no-probe"])
def test_the_first_transfer_waits_for_its_connection_outside_the_deadline(peer, reader, with_probe: bool):
    proc, name, info = peer
    dst = torch.zeros(1024, dtype=torch.uint8)
    reader.register([(dst.data_ptr(), 1024)])
    reader.load_peer(name, base64.b64decode(str(info["meta"])), next_version(),
                     int(str(info["probe"])) if with_probe else None)
    timer = stopped_for(proc.pid, 1.5)
    try:
        start = time.monotonic()
        if with_probe:
            reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], start + 1.0)
            # connected once the peer ran again (1.5 s), then the transfer had its own second
            assert 1.4 < time.monotonic() - start < transport.WIREUP_LIMIT_S + 1.0
            assert torch.equal(dst, torch.arange(256, dtype=torch.uint8).repeat(4))
        else:  # what a sample's first push met on a loaded host: the set-up counted in the 1000 ms
            with pytest.raises(TransferError) as caught:
                reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], start + 1.0)
            assert caught.value.code == LLMStatusCode.LLM_TIMEOUT
    finally:
        timer.join()
    # connected: a second transfer to a stopped peer needs nothing from it (UCX shared memory)
    timer = stopped_for(proc.pid, 1.5) if with_probe else None
    try:
        start = time.monotonic()
        reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], start + 1.0)
        assert time.monotonic() - start < 1.0
    finally:
        if timer is not None:
            timer.join()


def test_a_connection_that_is_not_up_in_time_is_a_timeout_naming_it(peer, reader, monkeypatch):
    proc, name, info = peer
    monkeypatch.setattr(transport, "WIREUP_LIMIT_S", 0.5)
    dst = torch.zeros(1024, dtype=torch.uint8)
    reader.register([(dst.data_ptr(), 1024)])
    reader.load_peer(name, base64.b64decode(str(info["meta"])), next_version(), int(str(info["probe"])))
    timer = stopped_for(proc.pid, 3.0)
    try:
        start = time.monotonic()
        with pytest.raises(TransferError) as caught:
            reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], start + 10.0)
        took = time.monotonic() - start
    finally:
        timer.join()
    assert caught.value.code == LLMStatusCode.LLM_TIMEOUT
    assert f"no connection to {name} within 500 ms" in caught.value.details
    assert 0.5 <= took < 2.5  # the connection's limit, not the transfer's 10 s
    # the peer runs again: the next transfer sets the connection up and moves the bytes
    reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], time.monotonic() + 10)
    assert torch.equal(dst, torch.arange(256, dtype=torch.uint8).repeat(4))


def test_a_connection_set_up_ahead_leaves_the_transfer_its_bytes_only(peer, reader):
    """What the link does now (the real link prepares its connection before it returns): the transfer
    after it needs nothing from the peer, even stopped, and meets its own deadline."""
    proc, name, info = peer
    dst = torch.zeros(1024, dtype=torch.uint8)
    reader.register([(dst.data_ptr(), 1024)])
    reader.load_peer(name, base64.b64decode(str(info["meta"])), next_version(), int(str(info["probe"])))
    assert reader.unconnected() == [name]
    assert reader.connect(name) > 0
    assert reader.unconnected() == []
    timer = stopped_for(proc.pid, 1.5)
    try:
        start = time.monotonic()
        reader.transfer("READ", name, [(dst.data_ptr(), int(str(info["addr"])), 1024)], start + 0.5)
        assert time.monotonic() - start < 0.5
    finally:
        timer.join()
    assert torch.equal(dst, torch.arange(256, dtype=torch.uint8).repeat(4))


def test_a_connection_not_up_within_its_limit_is_a_timeout(peer, reader):
    proc, name, info = peer
    reader.load_peer(name, base64.b64decode(str(info["meta"])), next_version(), int(str(info["probe"])))
    timer = stopped_for(proc.pid, 3.0)
    try:
        start = time.monotonic()
        with pytest.raises(TransferError) as caught:
            reader.connect(name, 0.5)
        took = time.monotonic() - start
    finally:
        timer.join()
    assert caught.value.code == LLMStatusCode.LLM_TIMEOUT
    assert f"no connection to {name} within 500 ms" in caught.value.details
    assert 0.5 <= took < 2.5
    assert reader.unconnected() == [name]  # still to do: the next link or transfer tries again


class _LoadingTransport:
    """A transport whose peer loads, and whose connection set-up raises ``error`` (or takes 10 ms)."""

    def __init__(self, error: TransferError | None) -> None:
        self.error = error
        self.calls: list[tuple[str, float]] = []

    def connect(self, peer: str, limit_s: float) -> float:
        self.calls.append((peer, limit_s))
        if self.error is not None:
            raise self.error
        return 0.01

    def load_peer(self, *args: object) -> None:
        pass


def test_the_link_reports_a_connection_not_up_by_its_deadline_as_llm_timeout() -> None:
    """HcclCommPrepare's HCCL_E_TIMEOUT is the real link's LLM_TIMEOUT (comm_entity.cc PrepareHcclComm)."""
    from kvtest.backends.sim import datadist as sim_datadist

    dd = sim_datadist.LLMDataDist.__new__(sim_datadist.LLMDataDist)
    late = _LoadingTransport(TransferError(LLMStatusCode.LLM_TIMEOUT, "no connection"))
    dd._plane, dd._transport = _Plane({}), late  # type: ignore[assignment]
    assert dd._reach(2, time.monotonic() + 2.0) == LLMStatusCode.LLM_TIMEOUT
    assert late.calls[0][0] == "peer-agent" and 1.5 < late.calls[0][1] <= 2.0  # the link's time left
    up = _LoadingTransport(None)
    dd._transport = up  # type: ignore[assignment]
    assert dd._reach(2, time.monotonic() - 1.0) == LLMStatusCode.LLM_SUCCESS
    assert up.calls == [("peer-agent", 0.001)]  # past its deadline: one last short try


class _Plane:
    def __init__(self, ranks: dict[str, int]) -> None:
        self.ranks = ranks

    def key(self, *parts: object) -> str:
        return "/".join(str(p) for p in parts)

    def fetch_many(self, keys: list[str]) -> list[dict[str, object]]:
        return [{"ranks": self.ranks} for _ in keys]

    def fetch(self, key: str) -> dict[str, object]:
        return {"agent": "peer-agent", "meta": "", "version": 1, "probe": None}


def test_a_two_sided_links_poll_tries_the_connection_for_a_while_not_the_whole_link() -> None:
    """query_register_mem_status is polled, and its caller checks between polls whether a peer failed:
    one poll tries the connection at most WIREUP_LIMIT_S (the link's timeout is 30 s by default), and a
    connection not up yet is PREPARING until the link's deadline, FAILED after it."""
    from kvtest.backends.sim import datadist as sim_datadist
    from kvtest.backends.sim.cache import RegisterMemStatus

    dd = sim_datadist.LLMDataDist.__new__(sim_datadist.LLMDataDist)
    late = _LoadingTransport(TransferError(LLMStatusCode.LLM_TIMEOUT, "no connection"))
    members = {1: 0, 2: 1}
    dd._initialized, dd._cm_enabled, dd._hixl, dd._cluster_id = True, True, False, 1
    dd._plane, dd._transport = _Plane({"1": 0, "2": 1}), late  # type: ignore[assignment]
    dd._comm_links = {7: sim_datadist._CommLink("comm", members, time.monotonic() + 30.0)}
    assert dd.query_register_mem_status(7) == RegisterMemStatus.PREPARING
    assert late.calls[0][0] == "peer-agent" and late.calls[0][1] <= transport.WIREUP_LIMIT_S
    dd._comm_links[7].deadline = time.monotonic() - 1.0
    assert dd.query_register_mem_status(7) == RegisterMemStatus.FAILED
