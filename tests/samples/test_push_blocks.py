"""push_blocks_sample: one-sided link, d pushes blocks of its blocks cache into p's.

p (cluster 0) listens and registers its blocks cache under BlocksCacheKey(0, 0); d (cluster 1)
registers its own under BlocksCacheKey(1, 0), links to p, pushes src blocks into p's dst blocks,
then both unlink (forced, each side) and unregister. Afterwards p's dst blocks hold d's src blocks,
every other block of p is as before, and d's cache is unchanged.
"""

from __future__ import annotations

import pytest

from kvtest.cases import BlocksCase

P, D = 0, 1

CASES = {
    "smoke": [
        BlocksCase("fp32", 2, 3, 10, (0, 1), (0, 2)),  # the sample's own: [3,10] fp32, K and V
        BlocksCase("fp16", 4, 8, 1024, (5, 1, 0), (7, 2, 3)),  # descending into interleaved
        BlocksCase("bf16", 2, 4, 255, (3,), (0,)),  # 510-byte blocks: not a whole 64-bit word
        BlocksCase("int8", 2, 16, 4096, tuple(range(8)), tuple(range(8, 16))),
    ],
    "nightly": [
        BlocksCase("fp16", 40, 32, 512 * 1024, tuple(range(0, 32, 2)), tuple(range(1, 32, 2)), "1MiB-blocks")
    ],
    "stress": [BlocksCase("bf16", 80, 256, 64 * 1024, tuple(range(256)), tuple(reversed(range(256))), "GiB")],
}


@pytest.mark.kv(topology="1p1d")
def test_push_blocks(kv, datadist, case: BlocksCase):
    me, side = (P, "p") if kv.role == "p" else (D, "d")
    node = datadist(me, listen=True, local_comm_res="")
    api = node.api
    desc = api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)
    tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side=side)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(me, 0))
    kv.barrier("register end")
    if kv.role == "p":
        kv.barrier("push end")
        expected = node.expected_after_rows(case.num_tensors, case.shape, case.torch_dtype, base="p",
                                            source="d", src_rows=case.src, dst_rows=case.dst)
        node.check(expected, tensors, name="cache after push_blocks")
        node.unlink_clusters(["d0"], force=True)
    else:
        node.must_link_clusters(["p0"])
        node.measure_repeats(
            "push_blocks",
            case.moved_bytes,
            lambda: node.cm.push_blocks(
                api.BlocksCacheKey(P, 0), cache, src_blocks=list(case.src), dst_blocks=list(case.dst)
            ),
            case.repeats,
        )
        kv.barrier("push end")
        node.check(
            node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="d"),
            tensors,
            name="source cache after push_blocks",
        )
        node.unlink_clusters(["p0"], force=True)
    node.unregister(cache)
    node.finalize()
