"""pull_cache_sample: two-sided link, pool-allocated caches, d pulls p's keyed batch slots.

p (cluster 1) and d (cluster 2) both init with a memory pool and ``link``. p allocates a cache whose
batch slot *i* is keyed ``CacheKey(1, req_id=i, 0)`` and fills its pool memory with the seeded
pattern; d allocates a cache without keys (filled with its own pattern, so untouched slots are
checked too) and pulls p's slots into its own batch indices, optionally only some layers. A
successful pull of every tensor releases the key: pulling it again is ``LLM_KV_CACHE_NOT_EXIST``. A
pull of some layers leaves it until every tensor has been pulled (hicann/hixl
src/llm_datadist/fsm/send_state.cc ``SendState::Process`` removes the key with the pulled tensor
indices; cache_manager.cc ``RemoveCacheKey``), so pulling those layers again succeeds. Then both
unlink, p removes its keys (no-ops for the consumed ones) and both deallocate and finalize.

Lifetime orders (hicann/hixl src/llm_datadist/cache_mgr/cache_manager.cc ``CacheManager::Deallocate``,
``RemoveCacheKey``): a case with ``deallocate_first`` has p call ``deallocate_cache`` before d pulls;
the release waits for the keys, so d's pulls succeed and p's memory keeps its bytes while a key is
pending. Where a slot is never pulled, p removes its key before the unlink and d's pull of it is
LLM_KV_CACHE_NOT_EXIST (and changes nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from kvtest.cases import RowsCase
from kvtest.patterns import LazyTensors

P, D = 1, 2
MIB = 1 << 20
SAMPLE_POOL = 64 * MIB  # the sample's mem_pool_cfg


@dataclass(frozen=True)
class PullCacheCase(RowsCase):
    """``num_tensors`` tensors of ``batch`` slots of ``row`` elements; d pulls (p slot, d batch_index).

    ``layers`` = ((src start, src stop), (dst start, dst stop)) passes src/dst_layer_range
    (``tensor_num_per_layer`` 2); ``None`` pulls every tensor.
    """

    dtype: str
    num_tensors: int
    batch: int
    row: int
    pulls: tuple[tuple[int, int], ...]
    layers: tuple[tuple[int, int], tuple[int, int]] | None = None
    label: str = ""
    #: p deallocates the cache before d pulls (its keys keep it alive)
    deallocate_first: bool = False

    tensors_per_layer = 2

    @property
    def shape(self) -> list[int]:
        return [self.batch, self.row]

    @property
    def slot_bytes(self) -> int:
        return self.row_bytes

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """(p tensor, d tensor) moved by each pull."""
        if self.layers is None:
            return [(t, t) for t in range(self.num_tensors)]
        (s0, s1), (d0, _) = self.layers
        tpl = self.tensors_per_layer
        return [((s0 + i) * tpl + k, (d0 + i) * tpl + k) for i in range(s1 - s0) for k in range(tpl)]

    @property
    def pull_bytes(self) -> int:
        return self.slot_bytes * len(self.pairs)

    @property
    def unpulled(self) -> list[int]:
        """p's slots d never pulls: their keys are removed, then refused to d."""
        return sorted(set(range(self.batch)) - {s for s, _ in self.pulls})

    @property
    def pool(self) -> int:
        """The sample's 64 MiB, or enough for the cache plus allocator slack."""
        need = self.num_tensors * (self.batch * self.slot_bytes + 4096)
        return max(SAMPLE_POOL, need + need // 8 + MIB)

    def layer_kwargs(self) -> dict[str, range]:
        if self.layers is None:
            return {}
        (s0, s1), (d0, d1) = self.layers
        return {"src_layer_range": range(s0, s1), "dst_layer_range": range(d0, d1)}

    def __str__(self) -> str:
        if all(s == d for s, d in self.pulls):
            slots = ",".join(str(s) for s, _ in self.pulls)
        else:
            slots = ",".join(f"{s}->{d}" for s, d in self.pulls)
        text = f"{self.dtype}-slots({slots})"
        if self.layers is not None:
            (s0, s1), (d0, d1) = self.layers
            text += f"-layers({s0}:{s1}->{d0}:{d1})"
        if self.deallocate_first:
            text += "-deallocated-first"
        return text + (f"-{self.label}" if self.label else "")


CASES = {
    "smoke": [
        PullCacheCase("fp16", 4, 2, 16384, ((0, 0), (1, 1))),  # the sample's own: 4 x [2,16384] fp16
        PullCacheCase("fp16", 4, 2, 16384, ((1, 1), (0, 0))),  # the other order
        # slots land at other batch indices; 2042-byte slots (not a whole 64-bit word)
        PullCacheCase("bf16", 2, 4, 1021, ((2, 0), (0, 3))),
        # one slot of 1000 bytes; p deallocates before the pull; two keys never pulled, removed
        PullCacheCase("fp32", 6, 3, 250, ((1, 1),), deallocate_first=True),
        PullCacheCase("int8", 4, 2, 4096, ((0, 0), (1, 1)), ((0, 1), (1, 2))),  # layer 0 -> layer 1
    ],
    "nightly": [
        PullCacheCase("fp16", 64, 4, 1 << 20, ((0, 0), (3, 1), (1, 3)), label="2MiB-slots"),
        PullCacheCase("bf16", 80, 2, 1 << 19, ((1, 0),), ((0, 20), (20, 40)), label="1MiB-slots"),
    ],
    "stress": [
        PullCacheCase("bf16", 160, 8, 1 << 20, tuple((i, 7 - i) for i in range(8)), label="GiB"),
    ],
}


def pulled(node, case: PullCacheCase) -> LazyTensors:
    """d's cache after the pulls: p's slots at the pulled batch indices of the pulled tensors, d's own
    pattern everywhere else; made one tensor at a time as the check reads it."""
    return node.expected_after_rows(
        case.num_tensors, case.shape, case.torch_dtype, base="d", source="p",
        src_rows=[slot for slot, _ in case.pulls], dst_rows=[index for _, index in case.pulls],
        moved={dst_tensor: src_tensor for src_tensor, dst_tensor in case.pairs},
    )


@pytest.mark.kv(topology="1p1d")
def test_pull_cache(kv, datadist, case: PullCacheCase):
    if kv.role == "p":
        node = datadist(P, mem_pool=case.pool)
        api = node.api
        comm_id = node.link(["d0"])
        desc = api.CacheDesc(
            case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE
        )
        keys = [api.CacheKey(P, slot, 0) for slot in range(case.batch)]
        cache = node.allocate_cache(desc, keys)
        source = node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="p")
        views = node.pool_views(cache, source)
        if case.deallocate_first:
            node.deallocate(cache)  # released only once every key is pulled or removed
        kv.barrier("cache ready")
        kv.barrier("decoder pull end")
        node.check(source, views, name="source cache after pull_cache")
        for slot in case.unpulled:
            node.cm.remove_cache_key(keys[slot])
        kv.barrier("keys removed")
        # d's pull of a removed key must be answered before the link goes: a pull in flight when the
        # peer unlinks is LLM_TIMEOUT on the real package, not the refusal this step is about
        kv.barrier("removed key pulled")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        for key in keys:
            node.cm.remove_cache_key(key)  # no-ops: pulled or removed
        if not case.deallocate_first:
            node.deallocate(cache)
        node.finalize()
    else:
        node = datadist(D, mem_pool=case.pool)
        api = node.api
        comm_id = node.link(["p0"])
        desc = api.CacheDesc(
            case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE
        )
        cache = node.allocate_cache(desc)
        views = node.pool_views(cache, node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="d"))
        kv.barrier("cache ready")
        for slot, index in case.pulls:
            with node.measure("pull_cache", case.pull_bytes):
                node.cm.pull_cache(api.CacheKey(P, slot, 0), cache, batch_index=index, **case.layer_kwargs())
        expected = pulled(node, case)
        node.check(expected, views, name="cache after pull_cache")
        kv.step("pull_cache again")
        slot, index = case.pulls[0]
        if {s for s, _ in case.pairs} != set(range(case.num_tensors)):
            # some layers only: the key stays until every tensor was pulled
            node.cm.pull_cache(api.CacheKey(P, slot, 0), cache, batch_index=index, **case.layer_kwargs())
        else:
            message = "[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
            with pytest.raises(api.LLMException, match=re.escape(message)) as raised:
                node.cm.pull_cache(api.CacheKey(P, slot, 0), cache, batch_index=index, **case.layer_kwargs())
            assert raised.value.status_code == api.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST
        node.check(expected, views, name="cache after a refused pull_cache")
        kv.barrier("decoder pull end")
        kv.barrier("keys removed")
        if case.unpulled:
            kv.step("pull_cache of a removed key")
            message = "[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
            with pytest.raises(api.LLMException, match=re.escape(message)):
                node.cm.pull_cache(api.CacheKey(P, case.unpulled[-1], 0), cache, batch_index=index)
            node.check(expected, views, name="cache after pulling a removed key")
        kv.barrier("removed key pulled")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.deallocate(cache)
        node.finalize()
