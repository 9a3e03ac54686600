"""push_cache_sample: one-sided link, d pushes a batch slot of its (non-blocks) cache into p's cache.

p (cluster 0) listens and registers a cache with register_cache; its cache id is published (the
sample hard-codes 1, the first id of a process). d (cluster 1) registers its own, links to p, pushes
its slot ``s`` into p's slot ``b`` through ``CacheKeyByIdAndIndex(0, cache_id, b)``, then tears the
link down with a non-forced unlink, which ends both sides: p does not unlink. Afterwards p's slot
``b`` holds d's slot ``s``, every other slot of p is as before, and d's cache is unchanged.
"""

from __future__ import annotations

import pytest

from kvtest.cases import CacheCase
from kvtest.patterns import with_rows

P, D = 0, 1

CASES = {
    "smoke": [
        CacheCase("fp32", 2, 3, 10, 0, 0),  # the sample's own: [3,10] fp32, K and V, slot 0 -> 0
        CacheCase("fp16", 4, 4, 512, 3, 1),
        CacheCase("bf16", 2, 2, 256, 1, 0),
        CacheCase("int8", 6, 8, 4096, 2, 7),
    ],
    "nightly": [CacheCase("fp16", 40, 8, 1024 * 1024, 5, 2, "2MiB-slots")],
    "stress": [CacheCase("bf16", 160, 4, 1024 * 1024, 3, 0, "GiB")],
}


def _desc(node, case: CacheCase):
    api = node.api
    return api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)


@pytest.mark.kv(topology="1p1d")
def test_push_cache(kv, datadist, case: CacheCase):
    if kv.role == "p":
        node = datadist(P, listen=True, local_comm_res="")
        tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side="p")
        cache = node.register_cache(_desc(node, case), tensors)
        assert cache.cache_id == 1, f"the sample hard-codes cache_id=1; p's first cache has {cache.cache_id}"
        kv.publish("cache_id", cache.cache_id)
        kv.barrier("register end")
        kv.barrier("push end")
        before = node.expected(case.num_tensors, case.shape, case.torch_dtype, side="p")
        pushed = node.expected(case.num_tensors, case.shape, case.torch_dtype, side="d")
        expected = [
            with_rows(b, s, src_rows=[case.src_batch], dst_rows=[case.dst_batch])
            for b, s in zip(before, pushed)
        ]
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
            node.cm.push_cache(key, cache, src_batch_index=case.src_batch)
        kv.barrier("push end")
        node.check(
            node.expected(case.num_tensors, case.shape, case.torch_dtype, side="d"),
            tensors,
            name="source cache after push_cache",
        )
        node.unlink_clusters(["p0"])  # non-forced: ends both sides
        kv.barrier("wait unlink end")
        node.unregister(cache)
        node.finalize()
