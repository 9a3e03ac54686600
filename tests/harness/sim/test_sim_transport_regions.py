"""The sim's transport registers a cache's neighbouring tensors as one region: it joins a transfer's
contiguous segments into one descriptor, and NIXL refuses a descriptor spanning two registrations, so a
cache made of views of one buffer (as serving frameworks allocate one) failed a run of blocks crossing
two tensors with LLM_FAILED, where the real llm_datadist moves it."""

from __future__ import annotations

import time
import uuid

import pytest
import torch

from kvtest.backends.sim import transport
from kvtest.backends.sim.transport import Transport, next_version, union_regions

HALF = 4096


@pytest.fixture(autouse=True)
def _empty_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "_idle_agents", [])


def test_union_regions_joins_touching_and_overlapping_regions_only() -> None:
    assert union_regions([(300, 100), (100, 100), (200, 50), (0, 0), (240, 20)]) == [(100, 160), (300, 100)]
    assert union_regions([(0, 10), (5, 2)]) == [(0, 10)]
    assert union_regions([(0, 10), (11, 1)]) == [(0, 10), (11, 1)]
    assert union_regions([]) == []


def test_a_run_of_segments_across_two_neighbouring_tensors_moves() -> None:
    reader, owner = Transport(f"kvtest-regions-{uuid.uuid4().hex[:8]}"), Transport(f"kvtest-regions-{uuid.uuid4().hex[:8]}")
    try:
        src = torch.randint(0, 256, (2 * HALF,), dtype=torch.uint8)
        dst = torch.zeros(2 * HALF, dtype=torch.uint8)
        # two tensors each, views of one buffer: registered as a cache's tensors are, in one call
        reader.register([(dst.data_ptr(), HALF), (dst.data_ptr() + HALF, HALF)])
        owner.register([(src.data_ptr(), HALF), (src.data_ptr() + HALF, HALF)])
        reader.load_peer(owner.name, owner.metadata(), next_version())
        # the last bytes of tensor 0 and the first of tensor 1: merge_segments makes them one descriptor
        segments = [(dst.data_ptr() + HALF - 512 + k * 512, src.data_ptr() + HALF - 512 + k * 512, 512)
                    for k in range(2)]
        assert len(transport.merge_segments(segments)) == 1
        reader.transfer("READ", owner.name, segments, time.monotonic() + 10)
        moved = slice(HALF - 512, HALF + 512)
        assert torch.equal(dst[moved], src[moved])
        assert not dst[: HALF - 512].any() and not dst[HALF + 512 :].any()
    finally:
        reader.close()
        owner.close()


def test_a_peer_reloaded_after_it_gave_memory_back_cannot_be_read_there() -> None:
    """A peer's new metadata replaces its old regions: NIXL keeps the old ones when new metadata is loaded
    over them (measured: a READ of a deregistered region then completes), so a reload drops the peer first.
    """
    reader, owner = Transport(f"kvtest-regions-{uuid.uuid4().hex[:8]}"), Transport(f"kvtest-regions-{uuid.uuid4().hex[:8]}")
    try:
        old, new = torch.full((HALF,), 7, dtype=torch.uint8), torch.full((HALF,), 9, dtype=torch.uint8)
        dst = torch.zeros(HALF, dtype=torch.uint8)
        reader.register([(dst.data_ptr(), HALF)])
        token = owner.register([(old.data_ptr(), HALF)])
        reader.load_peer(owner.name, owner.metadata(), next_version())
        reader.transfer("READ", owner.name, [(dst.data_ptr(), old.data_ptr(), 64)], time.monotonic() + 10)
        assert dst[:64].eq(7).all()
        owner.deregister(token)
        owner.register([(new.data_ptr(), HALF)])
        reader.load_peer(owner.name, owner.metadata(), next_version())
        with pytest.raises(transport.TransferError) as refused:
            reader.transfer("READ", owner.name, [(dst.data_ptr() + 64, old.data_ptr(), 64)], time.monotonic() + 10)
        assert refused.value.code == transport.LLMStatusCode.LLM_FAILED
        assert not dst[64:128].any()
        reader.transfer("READ", owner.name, [(dst.data_ptr(), new.data_ptr(), 64)], time.monotonic() + 10)
        assert dst[:64].eq(9).all()
    finally:
        reader.close()
        owner.close()
