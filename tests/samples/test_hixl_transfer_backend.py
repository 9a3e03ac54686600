"""hixl_transfer_backend_sample: the HIXL backend; both listen, both link, p pulls while d pushes.

Both init with ``local_comm_res=""`` and ``transfer_backend="hixl"`` and listen; p (cluster 0)
registers under BlocksCacheKey(0, 0), d (cluster 1) under BlocksCacheKey(1, 0). Between barrier 1
and barrier 2 each links to the other and, concurrently, p pulls d's pull-src blocks into its
pull-dst blocks while d pushes its push-src blocks into p's push-dst blocks (the sample's: pull
[2] -> [2], push [0, 1] -> [0, 1]; the destination sets are disjoint, so the result is fixed). Each
then unlinks non-forced (barrier 3) and p asserts its final content byte for byte, as the sample
asserts (all zeros there), and d checks its own cache is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kvtest.cases import RowsCase, index_list

P, D = 0, 1


@dataclass(frozen=True)
class HixlCase(RowsCase):
    dtype: str
    num_tensors: int
    blocks: int
    row: int
    pull_src: tuple[int, ...]
    pull_dst: tuple[int, ...]
    push_src: tuple[int, ...]
    push_dst: tuple[int, ...]
    label: str = ""

    def __post_init__(self) -> None:
        if set(self.pull_dst) & set(self.push_dst):
            raise ValueError(f"{self}: pull and push write the same blocks of p; the result would be racy")

    @property
    def shape(self) -> list[int]:
        return [self.blocks, self.row]

    def moved(self, blocks: tuple[int, ...]) -> int:
        return len(blocks) * self.row_bytes * self.num_tensors

    def __str__(self) -> str:
        j = index_list
        size = f"-{self.label}" if self.label else ""
        return (
            f"{self.dtype}-pull({j(self.pull_src)})->({j(self.pull_dst)})"
            f"-push({j(self.push_src)})->({j(self.push_dst)}){size}"
        )


CASES = {
    "smoke": [
        HixlCase("fp32", 2, 3, 10, (2,), (2,), (0, 1), (0, 1)),  # the sample's own: [3,10] fp32
        HixlCase("fp16", 4, 8, 512, (7, 0), (1, 6), (3, 4, 5), (0, 2, 7)),
        HixlCase("bf16", 2, 4, 256, (1,), (3,), (2,), (0,)),
        HixlCase(
            "int8", 2, 16, 4096, tuple(range(8)), tuple(range(8)), tuple(range(8, 16)), tuple(range(8, 16))
        ),
    ],
    "nightly": [
        HixlCase(
            "fp16",
            40,
            32,
            512 * 1024,
            tuple(range(0, 32, 2)),
            tuple(range(0, 32, 2)),
            tuple(range(1, 32, 2)),
            tuple(range(1, 32, 2)),
            "1MiB-blocks",
        )
    ],
    "stress": [
        HixlCase(
            "bf16",
            80,
            256,
            64 * 1024,
            tuple(range(128)),
            tuple(range(128, 256)),
            tuple(range(128, 256)),
            tuple(range(128)),
            "GiB",
        )
    ],
}


def _setup(kv, datadist, case: HixlCase, own: int):
    node = datadist(own, listen=True, local_comm_res="", transfer_backend="hixl")
    api = node.api
    desc = api.CacheDesc(case.num_tensors, case.shape, node.datatype(case.torch_dtype), api.Placement.DEVICE)
    tensors = node.tensors(case.num_tensors, case.shape, case.torch_dtype, side=kv.role)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(own, 0))
    return node, api, tensors, cache


@pytest.mark.kv(topology="1p1d")
def test_hixl_transfer_backend(kv, datadist, case: HixlCase):
    if kv.role == "p":
        node, api, tensors, cache = _setup(kv, datadist, case, P)
        kv.barrier("b1 register end")
        node.must_link_clusters(["d0"])
        with node.measure("pull_blocks", case.moved(case.pull_src)):
            node.cm.pull_blocks(
                api.BlocksCacheKey(D, 0),
                cache,
                src_blocks=list(case.pull_src),
                dst_blocks=list(case.pull_dst),
            )
        kv.barrier("b2 transfer end")
        node.unlink_clusters(["d0"])  # non-forced, as the sample
        kv.barrier("b3 unlink end")
        node.forget_links_to(["d0"])  # d's non-forced unlink ended the link d made to p
        # p pulled d's pull_src rows, then d pushed its push_src rows: both from d's pattern, in order
        expected = node.expected_after_rows(
            case.num_tensors, case.shape, case.torch_dtype, base="p", source="d",
            src_rows=[*case.pull_src, *case.push_src], dst_rows=[*case.pull_dst, *case.push_dst],
        )
        node.check(expected, tensors, name="cache after pull_blocks and d's push_blocks")
        node.unregister(cache)
        node.finalize()
    else:
        node, api, tensors, cache = _setup(kv, datadist, case, D)
        kv.barrier("b1 register end")
        node.must_link_clusters(["p0"])
        with node.measure("push_blocks", case.moved(case.push_src)):
            node.cm.push_blocks(
                api.BlocksCacheKey(P, 0),
                cache,
                src_blocks=list(case.push_src),
                dst_blocks=list(case.push_dst),
            )
        kv.barrier("b2 transfer end")
        node.unlink_clusters(["p0"])  # non-forced, as the sample
        kv.barrier("b3 unlink end")
        node.forget_links_to(["p0"])
        node.check(
            node.expected_lazily(case.num_tensors, case.shape, case.torch_dtype, side="d"),
            tensors,
            name="cache after p's pull_blocks and push_blocks",
        )
        node.unregister(cache)
        node.finalize()
