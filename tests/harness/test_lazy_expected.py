"""Expected states made one tensor at a time (kvtest.patterns.LazyTensors, Node.expected_after_rows /
expected_lazily): the same bytes as the full lists they replace, and the checker still fails on a
wrong byte, a block not moved and a misplaced block, naming the tensor."""

from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch

from kvtest import patterns
from kvtest.node import Node

SHAPE = (6, 257)  # 514-byte fp16 rows: not a whole 64-bit word
DTYPE = torch.float16
SRC, DST = (5, 0, 3), (1, 4, 2)
COUNT = 4


class _Scope:
    seed = 20260801


def _node() -> Any:
    node = Node.__new__(Node)  # only expected_* are used: they read kv.seed
    node.kv = _Scope()
    return node


def _full(side: str) -> list[torch.Tensor]:
    return [patterns.pattern(SHAPE, DTYPE, seed=_Scope.seed, tensor_index=i, side=side) for i in range(COUNT)]


def _pulled() -> list[torch.Tensor]:
    return [patterns.with_rows(b, s, src_rows=SRC, dst_rows=DST) for b, s in zip(_full("d0"), _full("p1"))]


def test_lazy_expected_states_hold_the_full_lists_bytes() -> None:
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST)
    assert len(lazy) == COUNT
    for made, full in zip(lazy, _pulled()):
        assert patterns.same_bytes(made, full)
    plain = _node().expected_lazily(COUNT, SHAPE, DTYPE, side="p1")
    assert all(patterns.same_bytes(a, b) for a, b in zip(plain, _full("p1")))
    assert patterns.same_bytes(plain[-1], _full("p1")[-1]) and len(plain[1:3]) == 2
    with pytest.raises(IndexError):
        plain[COUNT]


def test_the_lazy_check_passes_the_right_cache() -> None:
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST)
    patterns.check_all(lazy, _pulled(), name="d0 cache")


def test_the_lazy_check_finds_a_flipped_byte() -> None:
    actual = _pulled()
    actual[2].view(torch.uint8).view(-1)[1000] ^= 0x40
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST)
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, actual, name="d0 cache")
    assert [m.tensor_index for m in err.value.mismatches] == [2]
    assert err.value.mismatches[0].differing_total == 1


def test_the_lazy_check_finds_a_block_never_moved() -> None:
    actual = _full("d0")  # nothing pulled: every dst row still d0's own
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST)
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, actual, name="d0 cache")
    assert [m.tensor_index for m in err.value.mismatches] == list(range(COUNT))
    assert set(err.value.mismatches[0].differing_blocks) == set(DST)


def test_the_lazy_check_finds_a_misplaced_block() -> None:
    wrong = [patterns.with_rows(b, s, src_rows=SRC, dst_rows=(4, 1, 2)) for b, s in zip(_full("d0"), _full("p1"))]
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST)
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, wrong, name="d0 cache")
    assert err.value.mismatches[0].holds_block is not None  # "holds the bytes expected in block ..."


def test_a_lazy_expected_state_keeps_no_tensor() -> None:
    made: list[int] = []

    def make(i: int) -> torch.Tensor:
        made.append(i)
        return torch.zeros(4)

    lazy = patterns.LazyTensors(3, make)
    patterns.check_all(lazy, [torch.zeros(4)] * 3, name="zeros")
    patterns.check_all(lazy, [torch.zeros(4)] * 3, name="zeros")
    assert made == [0, 1, 2, 0, 1, 2]  # made at every read, nothing cached


def test_the_check_holds_one_expected_tensor_at_a_time() -> None:
    """The next expected tensor is made once the last one is gone, so a LazyTensors' tensors reuse one
    buffer (on the sim, the same host memory as the caches: three alive at once made the nightly
    copy_blocks fault 96 MiB fresh in its check, 32 MiB with one)."""
    alive: list[weakref.ref[torch.Tensor]] = []
    seen: list[int] = []

    def make(i: int) -> torch.Tensor:
        seen.append(sum(ref() is not None for ref in alive))
        tensor = torch.zeros(4)
        alive.append(weakref.ref(tensor))
        return tensor

    patterns.check_all(patterns.LazyTensors(4, make), [torch.zeros(4)] * 4, name="zeros")
    assert seen == [0, 0, 0, 0]


def test_replaced_tensors_are_the_other_sides_tensors() -> None:
    # d's cache after whole tensors 1 and 3 of p's arrived in its tensors 0 and 2 (transfer_cache_async)
    lazy = _node().expected_lazily(COUNT, SHAPE, DTYPE, side="d", replaced={0: ("p", 1), 2: ("p", 3)})
    want = _full("d")
    want[0], want[2] = _full("p")[1], _full("p")[3]
    patterns.check_all(lazy, want, name="d cache")
    unmoved = _full("d")  # tensor 2 never arrived
    unmoved[0] = _full("p")[1]
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, unmoved, name="d cache")
    assert [m.tensor_index for m in err.value.mismatches] == [2]
    swapped = list(want)
    swapped[0], swapped[2] = want[2], want[0]  # the right tensors in each other's place
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, swapped, name="d cache")
    assert [m.tensor_index for m in err.value.mismatches] == [0, 2]


def test_rows_copied_inside_one_cache_read_the_cache_as_it_was() -> None:
    # copy_blocks' expected state: rows of the side's own pattern, chained copies read the old rows
    src, dst = (0, 1, 2), (1, 2, 3)
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base="p", source="p", src_rows=src, dst_rows=dst)
    want = [patterns.with_rows(b, b, src_rows=src, dst_rows=dst) for b in _full("p")]
    patterns.check_all(lazy, want, name="p blocks")
    chained = [t.clone() for t in _full("p")]
    for t in chained:  # copied one row after another: row 0's bytes run down to row 3
        for s, d in zip(src, dst):
            t[d] = t[s]
    with pytest.raises(patterns.KVMismatch):
        patterns.check_all(lazy, chained, name="p blocks")


def test_rows_land_only_in_the_moved_tensors() -> None:
    # one layer pulled into another: the source's tensors 0 and 1 land in tensors 2 and 3, tensors 0
    # and 1 stay the base's own
    lazy = _node().expected_after_rows(
        COUNT, SHAPE, DTYPE, base="d0", source="p1", src_rows=SRC, dst_rows=DST, moved={2: 0, 3: 1}
    )
    base, source = _full("d0"), _full("p1")
    want = base[:2] + [patterns.with_rows(base[d], source[s], src_rows=SRC, dst_rows=DST) for d, s in ((2, 0), (3, 1))]
    patterns.check_all(lazy, want, name="d0 cache")
    same_layer = _pulled()  # every tensor got the rows of its own index: the wrong layer, and more
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, same_layer, name="d0 cache")
    assert [m.tensor_index for m in err.value.mismatches] == [0, 1, 2, 3]


def test_a_zeroed_cache_gets_only_the_moved_rows() -> None:
    # base None: a cache zeroed before the transfer (pull_cache_by_id's second pull)
    lazy = _node().expected_after_rows(COUNT, SHAPE, DTYPE, base=None, source="p1", src_rows=SRC, dst_rows=DST)
    zeros = [torch.zeros(SHAPE, dtype=DTYPE) for _ in range(COUNT)]
    want = [patterns.with_rows(z, s, src_rows=SRC, dst_rows=DST) for z, s in zip(zeros, _full("p1"))]
    patterns.check_all(lazy, want, name="d0 cache")
    stale = [t.clone() for t in want]
    stale[1][0] = _full("d0")[1][0]  # an unmoved row that kept its old bytes instead of zeros
    with pytest.raises(patterns.KVMismatch) as err:
        patterns.check_all(lazy, stale, name="d0 cache")
    assert [m.tensor_index for m in err.value.mismatches] == [1]
    assert err.value.mismatches[0].block == 0


def test_a_source_slot_past_the_destinations_rows() -> None:
    # slot 7 of an 8-slot source cache into slot 1 of a 2-slot destination (transfer by id and index)
    src_shape, dst_shape = (8, 257), (2, 257)
    lazy = _node().expected_after_rows(COUNT, dst_shape, DTYPE, base="d", source="p", src_rows=[7], dst_rows=[1])
    source = [patterns.pattern(src_shape, DTYPE, seed=_Scope.seed, tensor_index=i, side="p") for i in range(COUNT)]
    base = [patterns.pattern(dst_shape, DTYPE, seed=_Scope.seed, tensor_index=i, side="d") for i in range(COUNT)]
    want = [patterns.with_rows(b, s, src_rows=[7], dst_rows=[1]) for b, s in zip(base, source)]
    patterns.check_all(lazy, want, name="d cache")
    wrong_slot = [patterns.with_rows(b, s, src_rows=[6], dst_rows=[1]) for b, s in zip(base, source)]
    with pytest.raises(patterns.KVMismatch):
        patterns.check_all(lazy, wrong_slot, name="d cache")


def test_pool_views_are_filled_with_each_lazy_tensor_made_once() -> None:
    made: list[int] = []
    plain = _node().expected_lazily(COUNT, SHAPE, DTYPE, side="p1")

    def make(i: int) -> torch.Tensor:
        made.append(i)
        return plain[i]

    memory = [torch.empty(SHAPE, dtype=DTYPE) for _ in range(COUNT)]
    node = _node()
    node.api = type("Api", (), {"Placement": type("Placement", (), {"HOST": "host"})})
    cache = type("Cache", (), {"cache_desc": type("Desc", (), {"placement": "host"}),
                               "tensor_addrs": [t.data_ptr() for t in memory]})
    views = node.pool_views(cache, patterns.LazyTensors(COUNT, make))
    assert made == list(range(COUNT))
    patterns.check_all(plain, memory, name="pool")
    assert all(v.data_ptr() == m.data_ptr() for v, m in zip(views, memory))
