"""The tests ``benchmarks/floor.py`` runs: what a 1p1d sample test pays before it moves a byte.

Not collected by the sample or harness runs (it is named by path only). Each kind repeats ``ROUNDS``
times; every one checks what it did, so a floor measured on a broken run fails instead of reading low.
"""

from __future__ import annotations

import pytest
import torch

ROUNDS = 30
P, D = 1, 2


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_rendezvous(kv, round_: int) -> None:
    """The kv fixture, one value published and read back, one barrier."""
    kv.publish("round", round_)
    assert kv.fetch(kv.peers[0], "round") == round_
    kv.barrier("done")


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_init(kv, datadist, round_: int) -> None:
    """+ an LLMDataDist initialised (p listening, as the one-sided samples) and finalised on each role."""
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p")
    assert node.dd is not None
    kv.barrier("initialised")
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_link(kv, datadist, round_: int) -> None:
    """+ d's ``link_clusters`` to p (it fails the test unless LLM_SUCCESS) and one more barrier."""
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p")
    kv.barrier("initialised")
    if kv.role == "d":
        node.must_link_clusters(kv.roles_of("p"))
    kv.barrier("linked")
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_pull(kv, datadist, round_: int) -> None:
    """The smallest whole sample test: the pull_blocks xPyD flow with one 2 KiB tensor of 2 blocks, d
    pulling block 0 into its block 1 and checking every byte, p checking its source; its one transfer is
    timed, so this kind has an outside/inside ratio of its own."""
    shape, dtype = (2, 512), torch.float16
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p", local_comm_res="")
    api = node.api
    desc = api.CacheDesc(1, list(shape), node.datatype(dtype), api.Placement.DEVICE)
    tensors = node.tensors(1, shape, dtype, side=kv.me)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(node.cluster_id, 0))
    kv.barrier("registered")
    if kv.role == "p":
        kv.barrier("pulled")
        node.check(node.expected_lazily(1, shape, dtype, side=kv.me), tensors, name="source after the pull")
    else:
        node.must_link_clusters(["p0"])
        with node.measure("pull_blocks", 2 * 512):
            node.cm.pull_blocks(api.BlocksCacheKey(P, 0), cache, src_blocks=[0], dst_blocks=[1])
        node.check(node.expected_after_rows(1, shape, dtype, base=kv.me, source="p0", src_rows=[0], dst_rows=[1]),
                   tensors, name="cache after the pull")
        node.unlink_clusters(["p0"])
        kv.barrier("pulled")
    node.unregister(cache)
    node.finalize()
