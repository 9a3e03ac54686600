"""pull_blocks_xpyd_sample: x prompts, y decoders, one-sided links, every d pulls from every p.

Each process's cluster id is made as the sample makes it, ``(IPv4 as big-endian uint32 << 16) | port``
of its own ip:port; every p listens on that address, no d listens. Every process registers its blocks
cache under ``BlocksCacheKey(own cluster id, 0)``; every p fills it with its own content (the pattern
of its role name), every d with its own. Every d links to every p in one ``link_clusters`` call, pulls
from each p in order into the same dst blocks (checked after each pull, since the next one overwrites
them), and unlinks from all of them non-forced. The p's wait at a barrier (the sample sleeps 30 s), then
unregister and finalize: they never unlink.
"""

from __future__ import annotations

import ipaddress

import pytest

from kvtest.cases import BlocksCase

CASES = {
    "smoke": [
        BlocksCase("fp32", 1, 3, 10, (0, 1), (0, 2)),  # the sample's own: 1 tensor [3,10] fp32
        BlocksCase("fp16", 2, 6, 509, (5, 2, 1), (0, 4, 3)),  # descending into interleaved; 1018-byte blocks
    ],
    "nightly": [
        BlocksCase("fp16", 40, 32, 512 * 1024, tuple(range(0, 32, 2)), tuple(range(1, 32, 2)), "1MiB-blocks")
    ],
    "stress": [BlocksCase("bf16", 80, 256, 64 * 1024, tuple(range(256)), tuple(reversed(range(256))), "GiB")],
}


def xpyd_cluster_id(ip: str, port: int) -> int:
    """The sample's cluster id: the IPv4 address as a big-endian uint32, shifted left 16, or the port."""
    return (int(ipaddress.IPv4Address(ip)) << 16) | port


def _flow(kv, datadist, case: BlocksCase) -> None:
    # as the sample: a p listens on the ip:port its cluster id is made from, a d only takes its id from it
    node = datadist(xpyd_cluster_id, listen=kv.role == "p", local_comm_res="")
    api = node.api
    desc = api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)
    tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side=kv.me)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(node.cluster_id, 0))
    kv.barrier("register end")  # the sample's d sleeps 5 s here
    if kv.role == "p":
        kv.barrier("pull end")  # the sample's p sleeps 30 s here
        node.check(
            node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side=kv.me),
            tensors,
            name="source cache after every d pulled",
        )
        node.unregister(cache)
        node.finalize()
        return
    prompts = kv.roles_of("p")
    node.must_link_clusters(prompts)
    for p in prompts:
        key = api.BlocksCacheKey(node.peer(p)["cluster_id"], 0)
        with node.measure("pull_blocks", case.moved_bytes):
            node.cm.pull_blocks(key, cache, src_blocks=list(case.src), dst_blocks=list(case.dst))
        # every tensor: d's own pattern with p's src rows in its dst rows (with_rows), made one at a time
        expected = node.expected_after_rows(case.num_tensors, case.shape, case.torch_dtype, base=kv.me,
                                            source=p, src_rows=case.src, dst_rows=case.dst)
        node.check(expected, tensors, name=f"cache after pull_blocks from {p}")
    node.unlink_clusters(prompts)  # non-forced: ends both sides of every link
    kv.barrier("pull end")
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="2p1d")
def test_pull_blocks_2p1d(kv, datadist, case: BlocksCase):
    _flow(kv, datadist, case)


@pytest.mark.kv(topology="1p2d")
def test_pull_blocks_1p2d(kv, datadist, case: BlocksCase):
    _flow(kv, datadist, case)


@pytest.mark.kv(topology="2p2d")
def test_pull_blocks_2p2d(kv, datadist, case: BlocksCase):
    _flow(kv, datadist, case)
