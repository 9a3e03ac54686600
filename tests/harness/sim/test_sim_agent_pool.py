"""The sim's NIXL agents are reused: a closed transport's clean agent serves the next one of the process
(issue 27: a UCX context was most of a sim init), and peers still see exactly the new memory."""

from __future__ import annotations

import time
import uuid

import pytest
import torch

from kvtest.backends.sim import transport
from kvtest.backends.sim.transport import TransferError, Transport, next_version


@pytest.fixture(autouse=True)
def _empty_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_idle_agents", [])


def _name() -> str:
    return f"kvtest-pool-{uuid.uuid4().hex[:8]}"


def _read(reader: Transport, owner: Transport, src: torch.Tensor, dst: torch.Tensor, version: int) -> None:
    """``reader`` loads ``owner``'s metadata under ``version`` and reads ``src`` (owner's) into ``dst``."""
    reader.load_peer(owner.name, owner.metadata(), version)
    reader.transfer("READ", owner.name, [(dst.data_ptr(), src.data_ptr(), src.numel())],
                    time.monotonic() + 10)


def test_a_closed_clean_agent_serves_the_next_transport_and_its_peer_reads_the_new_memory() -> None:
    reader = Transport(_name())
    first = Transport(_name())
    old = torch.full((4096,), 0x11, dtype=torch.uint8)
    new = torch.full((4096,), 0x22, dtype=torch.uint8)
    dst = torch.zeros(4096, dtype=torch.uint8)
    reader.register([(dst.data_ptr(), dst.numel())])
    first.register([(old.data_ptr(), old.numel())])
    _read(reader, first, old, dst, next_version())
    assert torch.equal(dst, old)
    agent, name = first._agent, first.name

    first.close()
    assert transport._idle_agents == [(name, agent)]
    second = Transport(_name())
    try:
        assert second._agent is agent and second.name == name  # no new UCX context
        assert len(second._regs) == 1  # its own probe word only (transport.PROBE_BYTES)
        assert not second._peer_versions and not second._handles
        second.register([(new.data_ptr(), new.numel())])
        _read(reader, second, new, dst, next_version())  # a new version: the reader reloads
        assert torch.equal(dst, new)
    finally:
        second.close()
        reader.close()


def test_without_a_new_version_the_peer_keeps_the_old_memory_map() -> None:
    """The control: a reused agent's metadata under the version the peer already loaded is not reloaded,
    so a read of memory registered since then fails; :func:`next_version` is what prevents that."""
    reader = Transport(_name())
    first = Transport(_name())
    old = torch.full((4096,), 0x11, dtype=torch.uint8)
    new = torch.full((8192,), 0x22, dtype=torch.uint8)
    dst = torch.zeros(4096, dtype=torch.uint8)
    reader.register([(dst.data_ptr(), dst.numel())])
    first.register([(old.data_ptr(), old.numel())])
    _read(reader, first, old, dst, 1)
    first.close()
    second = Transport(_name())
    try:
        second.register([(new.data_ptr(), new.numel())])
        with pytest.raises(TransferError):
            _read(reader, second, new[4096:], dst, 1)
    finally:
        second.close()
        reader.close()


def test_an_agent_with_a_transfer_in_flight_or_an_abandoned_handle_is_not_reused() -> None:
    busy = Transport(_name())
    busy._in_flight = 1  # as while another thread's transfer runs
    busy.close()
    abandoned = Transport(_name())
    abandoned._abandoned.append(object())  # a handle that timed out in flight
    abandoned.close()
    assert transport._idle_agents == []
    assert busy._agent is not None and abandoned._agent is not None  # kept, and dropped with the object


def test_the_pool_keeps_at_most_max_idle_agents() -> None:
    made = [Transport(_name()) for _ in range(transport.MAX_IDLE_AGENTS + 1)]
    for item in made:
        item.close()
    assert len(transport._idle_agents) == transport.MAX_IDLE_AGENTS


def test_after_a_failed_test_the_idle_agents_are_destroyed() -> None:
    """The fixtures call ``after_failure`` when a test's body failed: an agent reused after a lost
    connection crashed its process later (tests/harness/test_two_hosts.py's flap test, 2 of 6 runs)."""
    from kvtest.backends import sim
    from kvtest.backends.sim.backend import SimBackend

    Transport(_name()).close()
    assert len(transport._idle_agents) == 1
    SimBackend(sim).after_failure()
    assert transport._idle_agents == []


def _counting_agents(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[str]:
    """make_agent as the transport calls it, its names recorded (``fail``: it raises instead)."""
    made: list[str] = []
    real = transport.make_agent

    def make(name: str, *args: int) -> object:
        made.append(name)
        if fail:
            raise RuntimeError("UCX said no")
        return real(name, *args)

    monkeypatch.setattr(transport, "make_agent", make)
    monkeypatch.setattr(transport, "_warm_up", None)
    return made


def test_the_warm_up_agent_serves_the_first_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's warm-up makes the process's first agent in the background; the first Transport
    takes it (waiting for it if need be) instead of making its own, and a second warm-up does nothing."""
    made = _counting_agents(monkeypatch)
    transport.warm_up("d1")
    transport.warm_up("d1")
    first = Transport(_name())
    assert first.name.startswith("kvtest-sim/warm/d1/") and made == [first.name]
    first.close()


def test_a_failed_warm_up_leaves_the_first_transport_to_make_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _counting_agents(monkeypatch, fail=True)
    transport.warm_up("p0")
    assert transport._warm_up is not None
    transport._warm_up.join(10)
    with pytest.raises(RuntimeError, match="UCX said no"):
        Transport("kvtest-pool-own")  # the error is the Transport's to report
    assert made == [made[0], "kvtest-pool-own"] and made[0].startswith("kvtest-sim/warm/p0/")
