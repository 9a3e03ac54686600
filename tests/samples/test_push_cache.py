"""push_cache_sample: one-sided link, d pushes a batch slot of its (non-blocks) cache into p's cache.

p (cluster 0) listens and registers a cache with register_cache; its cache id is published (the
sample hard-codes 1, the first id of a process). d (cluster 1) registers its own, links to p, pushes
its slot ``s`` into p's slot ``b`` through ``CacheKeyByIdAndIndex(0, cache_id, b)``, then tears the
link down with a non-forced unlink, which ends both sides: p does not unlink. Afterwards p's slot
``b`` holds d's slot ``s``, every other slot of p is as before, and d's cache is unchanged.

A case with ``layers`` pushes only those layers (``src_layer_range``/``dst_layer_range``,
tensor_num_per_layer 2): the other layers of p's slot ``b`` keep p's bytes. The ranges are equal
and do not start at 0 (the docs note push with differing ranges may be unsupported on npu; a stack
that ignored ``dst_layer_range`` would still write layers from 0 and be caught).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvtest.cases import CacheCase

P, D = 0, 1
TENSORS_PER_LAYER = 2


@dataclass(frozen=True)
class PushCacheCase(CacheCase):
    """A :class:`CacheCase`; ``layers`` = (start, stop) pushes only those layers, into the same layers."""

    layers: tuple[int, int] | None = None

    def tensor_pairs(self) -> list[tuple[int, int]]:
        """(d tensor, p tensor) the push moves."""
        if self.layers is None:
            return [(t, t) for t in range(self.num_tensors)]
        tpl = TENSORS_PER_LAYER
        return [(t, t) for t in range(self.layers[0] * tpl, self.layers[1] * tpl)]

    def layer_kwargs(self) -> dict[str, range]:
        if self.layers is None:
            return {}
        return {"src_layer_range": range(*self.layers), "dst_layer_range": range(*self.layers)}

    @property
    def moved_bytes(self) -> int:
        return self.slot_bytes * len(self.tensor_pairs())

    def __str__(self) -> str:
        text = super().__str__()
        return text if self.layers is None else text + f"-layers[{self.layers[0]}:{self.layers[1]}]"


CASES = {
    "smoke": [
        PushCacheCase("fp32", 2, 3, 10, 0, 0),  # the sample's own: [3,10] fp32, K and V, slot 0 -> 0
        PushCacheCase("fp16", 4, 4, 512, 3, 1),
        PushCacheCase("bf16", 2, 2, 256, 1, 0),
        PushCacheCase("int8", 6, 8, 4093, 2, 7),  # 4093-byte slots: not a whole 64-bit word
        PushCacheCase("fp16", 8, 3, 256, 2, 1, layers=(3, 4)),  # the last of 4 layers -> the same layer
    ],
    "nightly": [PushCacheCase("fp16", 40, 8, 1024 * 1024, 5, 2, "2MiB-slots")],
    "stress": [PushCacheCase("bf16", 160, 4, 1024 * 1024, 3, 0, "GiB")],
}


def _desc(node, case: CacheCase):
    api = node.api
    return api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)


@pytest.mark.kv(topology="1p1d")
def test_push_cache(kv, datadist, case: PushCacheCase):
    if kv.role == "p":
        node = datadist(P, listen=True, local_comm_res="")
        tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side="p")
        cache = node.register_cache(_desc(node, case), tensors)
        assert cache.cache_id == 1, f"the sample hard-codes cache_id=1; p's first cache has {cache.cache_id}"
        kv.publish("cache_id", cache.cache_id)
        kv.barrier("register end")
        kv.barrier("push end")
        expected = node.expected_after_rows(
            case.num_tensors, case.shape, case.torch_dtype, base="p", source="d",
            src_rows=[case.src_batch], dst_rows=[case.dst_batch], moved={p_t: d_t for d_t, p_t in case.tensor_pairs()},
        )
        node.check(expected, tensors, name="cache after push_cache")
        kv.barrier("wait unlink end")
        node.forget_links_to(["d0"])  # d's non-forced unlink tore down p's end too
        node.unregister(cache)
        node.finalize()
    else:
        node = datadist(D, listen=True, local_comm_res="")
        api = node.api
        tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side="d")
        cache = node.register_cache(_desc(node, case), tensors)
        kv.barrier("register end")
        node.must_link_clusters(["p0"])
        cache_id = kv.fetch("p0", "cache_id")
        assert cache_id == 1, f"the sample hard-codes cache_id=1; p published {cache_id}"
        key = api.CacheKeyByIdAndIndex(cluster_id=P, cache_id=cache_id, batch_index=case.dst_batch)
        with node.measure("push_cache", case.moved_bytes):
            node.cm.push_cache(key, cache, src_batch_index=case.src_batch, **case.layer_kwargs())
        kv.barrier("push end")
        node.check(
            node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="d"),
            tensors,
            name="source cache after push_cache",
        )
        node.unlink_clusters(["p0"])  # non-forced: ends both sides
        kv.barrier("wait unlink end")
        node.unregister(cache)
        node.finalize()
