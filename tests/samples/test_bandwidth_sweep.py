"""Bandwidth sweep (``pytest -m bench``; not in the default run): pull_blocks and push_blocks over
block sizes 4 KiB .. 64 MiB and block counts 1 .. 256, the total per point capped by backend
(256 MiB on sim, 4 GiB on npu). Each point times SWEEP_REPEATS transfers after one warm-up, checks the
bytes that arrived, and lands in the results file so ``kvtest compare`` gates it too. p0 prints the
table (size, count, GB/s, p50, p99) at the end of the run.
"""

from __future__ import annotations

import pytest
import torch

from kvtest.cases import SWEEP_CAP, SWEEP_REPEATS, SweepPoint, sweep_points
from kvtest.state import chosen_backend

P, D = 0, 1


def pytest_generate_tests(metafunc):
    if "point" in metafunc.fixturenames:
        backend, _ = chosen_backend(metafunc.config)
        points = sweep_points(SWEEP_CAP.get(backend.name, SWEEP_CAP["sim"]))
        metafunc.parametrize("point", points, ids=[str(p) for p in points])


@pytest.mark.bench
@pytest.mark.kv(topology="1p1d", timeout=300)
def test_sweep(kv, datadist, point: SweepPoint):
    shape = [point.count, point.block_bytes]
    blocks = list(range(point.count))
    node = datadist(P if kv.role == "p" else D, listen=True, local_comm_res="")
    api = node.api
    desc = api.CacheDesc(1, shape, node.datatype(torch.uint8), api.Placement.DEVICE)
    side = "p" if kv.role == "p" else "d"
    tensors = node.tensors(1, shape, torch.uint8, side=side)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(node.cluster_id, 0))
    kv.barrier("registered")
    if kv.role == "d":
        node.must_link_clusters(["p0"])
        transfer = node.cm.pull_blocks if point.api == "pull_blocks" else node.cm.push_blocks
        node.measure_repeats(
            point.api,
            point.total,
            lambda: transfer(api.BlocksCacheKey(P, 0), cache, blocks, blocks),
            SWEEP_REPEATS,
        )
    kv.barrier("transferred")
    receiver = "d" if point.api == "pull_blocks" else "p"
    if kv.role == receiver:
        node.check(
            node.expected(1, shape, torch.uint8, side="p" if receiver == "d" else "d"),
            tensors,
            name=f"cache after {point.api}",
        )
    node.unlink_clusters(["d0" if kv.role == "p" else "p0"], force=True)  # each end, as push_blocks does
    node.unregister(cache)
    node.finalize()
