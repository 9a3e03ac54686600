"""pull_blocks_sample: two-sided link, registered memory, d pulls p's blocks, then swaps them out and in.

p (cluster 1) and d (cluster 2) init without a memory pool and register a blocks cache of their own
tensors before ``link``: p under ``BlocksCacheKey(1, 0)``, d without a key. d pulls p's src blocks
into its dst blocks (every other block of d keeps d's own contents), then round-trips its blocks
through a host blocks cache (``Cache.create_cpu_cache``): swap-out device -> host, the host copy must
equal the device bytes; the device tensors are overwritten; swap-in host -> device must restore them.
Then both unlink and finalize (p never unregisters, as in the sample).
"""

from __future__ import annotations

import pytest

from kvtest.cases import BlocksCase
from kvtest.patterns import with_rows

P, D = 1, 2

CASES = {
    "smoke": [
        BlocksCase("fp32", 1, 2, 4096, (0, 1), (0, 1)),  # the sample's [2,1048576] fp32, 1 tensor, smaller
        BlocksCase("fp16", 4, 8, 1024, (0, 3, 5), (7, 1, 2)),
        BlocksCase("bf16", 2, 6, 512, (5,), (0,)),
        BlocksCase("int8", 8, 16, 2048, tuple(range(0, 16, 2)), tuple(range(1, 16, 2))),
    ],
    "nightly": [
        BlocksCase("fp32", 1, 2, 1 << 20, (0, 1), (0, 1), "sample-8MiB"),  # the sample's own size
        BlocksCase("fp16", 40, 16, 512 * 1024, tuple(range(0, 16, 2)), tuple(range(1, 16, 2)), "1MiB-blocks"),
    ],
    "stress": [BlocksCase("bf16", 80, 256, 64 * 1024, tuple(range(256)), tuple(reversed(range(256))), "GiB")],
}


def blocks_desc(node, case: BlocksCase, placement):
    return node.api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), placement)


@pytest.mark.kv(topology="1p1d")
def test_pull_blocks(kv, datadist, case: BlocksCase):
    if kv.role == "p":
        node = datadist(P)
        api = node.api
        source = node.expected(case.num_tensors, case.shape, case.torch_dtype, side="p")
        tensors = [node.backend.to_device(t) for t in source]
        node.register_blocks_cache(
            blocks_desc(node, case, api.Placement.DEVICE), tensors, api.BlocksCacheKey(P, 0)
        )
        comm_id = node.link(["d0"])
        kv.barrier("cache ready")
        kv.barrier("decoder pull end")
        node.check(source, tensors, name="source cache after pull_blocks")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.finalize()
    else:
        node = datadist(D)
        api = node.api
        before = node.expected(case.num_tensors, case.shape, case.torch_dtype, side="d")
        tensors = [node.backend.to_device(t) for t in before]
        cache = node.register_blocks_cache(blocks_desc(node, case, api.Placement.DEVICE), tensors)
        comm_id = node.link(["p0"])
        kv.barrier("cache ready")
        node.measure_repeats(
            "pull_blocks",
            case.moved_bytes,
            lambda: node.cm.pull_blocks(
                api.BlocksCacheKey(P, 0), cache, src_blocks=list(case.src), dst_blocks=list(case.dst)
            ),
            case.repeats,
        )
        pulled = node.expected(case.num_tensors, case.shape, case.torch_dtype, side="p")
        expected = [with_rows(b, s, src_rows=case.src, dst_rows=case.dst) for b, s in zip(before, pulled)]
        del before, pulled
        node.check(expected, tensors, name="cache after pull_blocks")

        # swap-out device -> host and swap-in host -> device, every block to the same index (as the sample)
        host = [
            t.contiguous() for t in node.expected(case.num_tensors, case.shape, case.torch_dtype, side="h")
        ]
        cpu_cache = api.Cache.create_cpu_cache(
            blocks_desc(node, case, api.Placement.HOST), [t.data_ptr() for t in host]
        )
        mapping = {block: block for block in range(case.blocks)}
        all_bytes = case.blocks * case.block_bytes * case.num_tensors
        with node.measure("swap_blocks", all_bytes):
            node.cm.swap_blocks(cache, cpu_cache, mapping)
        node.check(expected, host, name="host cache after swap_blocks out")
        for tensor in tensors:
            tensor.zero_()  # overwritten: only the swap-in can bring the bytes back
        with node.measure("swap_blocks", all_bytes):
            node.cm.swap_blocks(cpu_cache, cache, mapping)
        node.check(expected, tensors, name="cache after swap_blocks in")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.finalize()
        del host  # the host cache's memory lives until here
