"""pull_from_cache_to_blocks: two-sided link, d pulls one of p's contiguous batch slots into its blocks.

p (cluster 1) inits with a memory pool, links, allocates a cache whose slots are keyed
``CacheKey(1, req_id=slot, 0)`` and fills it with the seeded pattern. d (cluster 2) registers a blocks
cache of its own tensors before ``link`` and pulls with ``pull_blocks(CacheKey(1, slot, 0), cache,
src_blocks=[], dst_blocks=...)``: the slot's bytes, in order, spread over the dst blocks (one block
in the sample, where a block is as large as a slot), on every tensor. Every other block of d keeps d's
contents, and the pulled key is released. Then both unlink, p removes its keys, deallocates, finalizes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch

from kvtest.cases import DTYPES, index_list
from kvtest.patterns import LazyTensors, with_rows

P, D = 1, 2
MIB = 1 << 20
SAMPLE_POOL = 64 * MIB  # the sample's mem_pool_cfg, on both sides


@dataclass(frozen=True)
class CacheToBlocksCase:
    """p: ``num_tensors`` x [``slots``, slot row]; d: ``num_tensors`` x [``blocks``, ``block_row``].

    A slot is ``len(dst)`` blocks long; d pulls p's slot ``slot`` into its blocks ``dst``, in order.
    """

    dtype: str
    num_tensors: int
    slots: int
    blocks: int
    block_row: int
    slot: int
    dst: tuple[int, ...]
    label: str = ""

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def slot_shape(self) -> list[int]:
        return [self.slots, self.block_row * len(self.dst)]

    @property
    def blocks_shape(self) -> list[int]:
        return [self.blocks, self.block_row]

    @property
    def slot_bytes(self) -> int:
        return self.block_row * len(self.dst) * self.torch_dtype.itemsize

    @property
    def moved_bytes(self) -> int:
        return self.slot_bytes * self.num_tensors

    @property
    def pool(self) -> int:
        """The sample's 64 MiB, or enough for p's cache plus allocator slack."""
        need = self.num_tensors * (self.slots * self.slot_bytes + 4096)
        return max(SAMPLE_POOL, need + need // 8 + MIB)

    def __str__(self) -> str:
        dst = index_list(self.dst)
        size = f"-{self.label}" if self.label else ""
        return f"{self.dtype}-slot{self.slot}->blocks({dst}){size}"


CASES = {
    "smoke": [
        CacheToBlocksCase("fp16", 4, 2, 2, 16384, 0, (0,)),  # the sample's own: 4 x [2,16384] fp16 both sides
        CacheToBlocksCase("fp16", 4, 2, 2, 16384, 0, (1,)),
        # the last slot spread over 4 blocks of 510 bytes (not a whole 64-bit word)
        CacheToBlocksCase("bf16", 2, 3, 8, 255, 2, (5, 0, 7, 2)),
        CacheToBlocksCase("fp32", 6, 2, 4, 512, 1, (3, 1)),
        CacheToBlocksCase("int8", 2, 1, 16, 1024, 0, tuple(range(8, 16))),
    ],
    "nightly": [
        CacheToBlocksCase("fp16", 64, 4, 64, 64 * 1024, 3, tuple(range(63, 31, -2)), "128KiB-blocks"),
    ],
    "stress": [
        CacheToBlocksCase("bf16", 160, 2, 128, 64 * 1024, 1, tuple(range(127, -1, -2)), "GiB"),
    ],
}


def expected_blocks(
    case: CacheToBlocksCase, before: Sequence[torch.Tensor], source: Sequence[torch.Tensor]
) -> LazyTensors:
    """d's blocks after the pull, a tensor at a time as check reads them: block ``dst[j]`` holds the
    j-th block-sized piece of p's slot."""
    pieces = range(len(case.dst))

    def make(index: int) -> torch.Tensor:
        slot = source[index][case.slot].reshape(len(case.dst), case.block_row)
        return with_rows(before[index], slot, src_rows=pieces, dst_rows=case.dst)

    return LazyTensors(len(before), make)


@pytest.mark.kv(topology="1p1d")
def test_pull_from_cache_to_blocks(kv, datadist, case: CacheToBlocksCase):
    if kv.role == "p":
        node = datadist(P, mem_pool=case.pool)
        api = node.api
        comm_id = node.link(["d0"])
        desc = api.CacheDesc(
            case.num_tensors, case.slot_shape, node.datatype(case.torch_dtype), api.Placement.DEVICE
        )
        keys = [api.CacheKey(P, slot, 0) for slot in range(case.slot + 1)]  # the sample keys slot 0 only
        cache = node.allocate_cache(desc, keys)
        source = node.expected(case.num_tensors, case.slot_shape, case.torch_dtype, side="p")
        views = node.pool_views(cache, source)
        kv.barrier("cache ready")
        kv.barrier("decoder pull end")
        node.check(source, views, name="source cache after pull_blocks")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        for key in keys:
            node.cm.remove_cache_key(key)
        node.deallocate(cache)
        node.finalize()
    else:
        node = datadist(D, mem_pool=SAMPLE_POOL)
        api = node.api
        desc = api.CacheDesc(
            case.num_tensors, case.blocks_shape, node.datatype(case.torch_dtype), api.Placement.DEVICE
        )
        tensors = node.tensors(case.num_tensors, case.blocks_shape, case.torch_dtype, side="d")
        cache = node.register_blocks_cache(desc, tensors)
        comm_id = node.link(["p0"])
        kv.barrier("cache ready")
        key = api.CacheKey(P, case.slot, 0)
        with node.measure("pull_blocks", case.moved_bytes):
            node.cm.pull_blocks(key, cache, src_blocks=[], dst_blocks=list(case.dst))
        before = node.expected_lazily(case.num_tensors, case.blocks_shape, case.torch_dtype, side="d")
        source = node.expected_lazily(case.num_tensors, case.slot_shape, case.torch_dtype, side="p")
        expected = expected_blocks(case, before, source)
        node.check(expected, tensors, name="blocks after pull_blocks from a cache")
        kv.step("pull_blocks again")
        message = "[pull_blocks] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
        with pytest.raises(api.LLMException, match=re.escape(message)) as raised:
            node.cm.pull_blocks(key, cache, src_blocks=[], dst_blocks=list(case.dst))
        assert raised.value.status_code == api.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        node.check(expected, tensors, name="blocks after a refused second pull_blocks")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.finalize()
