"""Property-based cases (Hypothesis) against an independent reference model.

Two subjects:

- the sim's address arithmetic (``kvtest.backends.sim.layout``: layer ranges to tensor pairs, block
  lists and slots to byte spans, spans to absolute moves) and its local copies
  (``kvtest.backends.sim.local_copy``: ``copy_cache``, ``copy_blocks``), run on real memory;
- kvtest's own pattern checks (``kvtest.patterns``: ``with_rows``, ``compare``/``check_all``).

The reference model is a few lines of plain Python over ``bytearray``s: what every byte of every tensor
must hold after the call, including every byte that must NOT change. Memory is one flat buffer with
guard bytes between the tensors, so a move that runs past a tensor is seen as well.

Examples: ``PROFILE`` (``kvtest``) by default, bounded so the whole module stays well under 20 s;
``kvtest-full`` (many more) when ``KVTEST_HARNESS_FULL=1``, as CI sets. A counterexample Hypothesis
finds goes into the test as an ``@example`` (or a plain test below), so it is re-run every time.
"""

from __future__ import annotations

import ctypes
import os
import random
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from kvtest import patterns
from kvtest.backends.sim import local_copy
from kvtest.backends.sim.cache import Cache, CacheDesc, DataType
from kvtest.backends.sim.layout import block_spans, expand, slot_to_blocks_spans, tensor_pairs
from kvtest.backends.sim.seam import FaultSeam
from kvtest.backends.sim.status import LLMException

# the default lane is derandomized: the same examples every run, so it cannot flake, and the proofs
# below (each property fails on a broken implementation) hold every time; CI's full lane searches anew
settings.register_profile(
    "kvtest", max_examples=25, deadline=None, database=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "kvtest-full", max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
PROFILE = "kvtest-full" if os.environ.get("KVTEST_HARNESS_FULL") == "1" else "kvtest"
SETTINGS = settings.get_profile(PROFILE)
GUARD = 16


# -- the reference model ------------------------------------------------------------------------------


class Memory:
    """Tensors of ``nbytes`` each, laid out in one buffer with ``GUARD`` bytes around each, every byte
    distinct-ish (seeded), so a wrong source shows."""

    def __init__(self, tensors: int, nbytes: int, seed: int) -> None:
        self.nbytes = nbytes
        self.stride = nbytes + GUARD
        rng = random.Random(seed)
        self.buf = bytearray(rng.randbytes(GUARD + tensors * self.stride))
        self.addrs = [GUARD + t * self.stride for t in range(tensors)]

    def tensor(self, t: int) -> bytearray:
        return self.buf[self.addrs[t] : self.addrs[t] + self.nbytes]


def apply_moves(src: Memory, dst: Memory, moves: Sequence[tuple[int, int, int]]) -> None:
    """Run absolute (source offset, destination offset, bytes) moves on the flat buffers, in order."""
    for s, d, n in moves:
        dst.buf[d : d + n] = src.buf[s : s + n]


def reference_blocks(
    src: Memory, dst: Memory, tensor_map: dict[int, int], src_rows: Sequence[int], dst_rows: Sequence[int],
    row: int,
) -> bytearray:
    """The destination buffer after block ``src_rows[i]`` of each mapped source tensor lands in block
    ``dst_rows[i]`` of its destination tensor: every other byte, the guards included, as before."""
    out = bytearray(dst.buf)
    for d, s in tensor_map.items():
        source = src.tensor(s)
        for sr, dr in zip(src_rows, dst_rows):
            at = dst.addrs[d] + dr * row
            out[at : at + row] = source[sr * row : (sr + 1) * row]
    return out


# -- strategies ---------------------------------------------------------------------------------------


@st.composite
def layer_ranges(draw, max_layers: int = 5):
    """(layers of the source, layers of the destination, tensors per layer, src range, dst range);
    ranges of equal length inside their caches, or None for every tensor to the same index."""
    tpl = draw(st.integers(1, 3))
    if draw(st.booleans()):
        layers = draw(st.integers(1, max_layers))
        return layers, layers, tpl, None, None
    src_layers = draw(st.integers(1, max_layers))
    dst_layers = draw(st.integers(1, max_layers))
    length = draw(st.integers(1, min(src_layers, dst_layers)))
    s0 = draw(st.integers(0, src_layers - length))
    d0 = draw(st.integers(0, dst_layers - length))
    return src_layers, dst_layers, tpl, range(s0, s0 + length), range(d0, d0 + length)


@st.composite
def block_lists(draw):
    """(source blocks count, destination blocks count, src list, dst list): any order, gaps, repeats in
    the source, distinct destinations."""
    src_count = draw(st.integers(1, 9))
    dst_count = draw(st.integers(1, 9))
    dst = draw(st.lists(st.integers(0, dst_count - 1), min_size=1, max_size=dst_count, unique=True))
    src = draw(st.lists(st.integers(0, src_count - 1), min_size=len(dst), max_size=len(dst)))
    return src_count, dst_count, src, dst


ROW_BYTES = st.integers(1, 67)  # any size: 1 byte, odd, below and above a word


# -- the sim's address arithmetic ---------------------------------------------------------------------


@SETTINGS
@given(ranges=layer_ranges(), blocks=block_lists(), row=ROW_BYTES, seed=st.integers(0, 2**32))
@example(ranges=(2, 3, 2, range(1, 2), range(2, 3)), blocks=(4, 4, [3], [0]), row=1, seed=0)
def test_block_transfer_moves_exactly_the_listed_blocks_of_the_mapped_layers(ranges, blocks, row, seed):
    """pull_blocks / push_blocks / transfer_cache_async block indices: pairs x spans x addresses."""
    src_layers, dst_layers, tpl, src_range, dst_range = ranges
    src_count, dst_count, src_rows, dst_rows = blocks
    src = Memory(src_layers * tpl, src_count * row, seed)
    dst = Memory(dst_layers * tpl, dst_count * row, seed + 1)
    before = Memory(dst_layers * tpl, dst_count * row, seed + 1)
    pairs = tensor_pairs(src_layers * tpl, dst_layers * tpl, src_range, dst_range, tpl)
    spans = block_spans(src_rows, dst_rows, row)
    apply_moves(src, dst, expand(pairs, src.addrs, dst.addrs, spans))

    sr = src_range if src_range is not None else range(src_layers)
    dr = dst_range if dst_range is not None else range(dst_layers)
    tensor_map = {d * tpl + k: s * tpl + k for s, d in zip(sr, dr) for k in range(tpl)}
    assert dst.buf == reference_blocks(src, before, tensor_map, src_rows, dst_rows, row)


@SETTINGS
@given(
    layers=st.integers(1, 4),
    tpl=st.integers(1, 2),
    slots=st.integers(1, 4),
    pieces=st.integers(1, 4),
    block=ROW_BYTES,
    extra_blocks=st.integers(0, 4),
    data=st.data(),
)
def test_slot_to_blocks_spreads_one_slot_over_the_listed_blocks(layers, tpl, slots, pieces, block, extra_blocks, data):
    """pull_blocks from a CacheKey / transfer_cache_async to blocks: piece j of the slot -> block dst[j]."""
    slot_bytes = pieces * block
    blocks = pieces + extra_blocks
    dst_rows = data.draw(st.permutations(range(blocks)).map(lambda p: p[:pieces]))
    slot = data.draw(st.integers(0, slots - 1))
    seed = data.draw(st.integers(0, 2**32))
    n = layers * tpl
    src = Memory(n, slots * slot_bytes, seed)
    dst = Memory(n, blocks * block, seed + 1)
    before = Memory(n, blocks * block, seed + 1)
    spans = slot_to_blocks_spans(slot, slot_bytes, dst_rows, block)
    apply_moves(src, dst, expand(tensor_pairs(n, n, None, None, tpl), src.addrs, dst.addrs, spans))
    # the slot seen as ``pieces`` rows of one block each, at row offset ``slot * pieces``
    rows = [slot * pieces + j for j in range(pieces)]
    assert dst.buf == reference_blocks(src, before, {t: t for t in range(n)}, rows, dst_rows, block)


@SETTINGS
@given(ranges=layer_ranges(), slots=st.integers(1, 4), dst_slots=st.integers(1, 4), row=ROW_BYTES, data=st.data())
def test_slot_transfer_moves_one_slot_of_the_mapped_layers(ranges, slots, dst_slots, row, data):
    """pull_cache / push_cache / transfer_cache_async by id: one (src slot, dst slot) span per pair."""
    src_layers, dst_layers, tpl, src_range, dst_range = ranges
    if src_range is None:
        dst_layers = src_layers
    s = data.draw(st.integers(0, slots - 1))
    d = data.draw(st.integers(0, dst_slots - 1))
    seed = data.draw(st.integers(0, 2**32))
    src = Memory(src_layers * tpl, slots * row, seed)
    dst = Memory(dst_layers * tpl, dst_slots * row, seed + 1)
    before = Memory(dst_layers * tpl, dst_slots * row, seed + 1)
    pairs = tensor_pairs(src_layers * tpl, dst_layers * tpl, src_range, dst_range, tpl)
    apply_moves(src, dst, expand(pairs, src.addrs, dst.addrs, [(s * row, d * row, row)]))
    sr = src_range if src_range is not None else range(src_layers)
    dr = dst_range if dst_range is not None else range(dst_layers)
    tensor_map = {dl * tpl + k: sl * tpl + k for sl, dl in zip(sr, dr) for k in range(tpl)}
    assert dst.buf == reference_blocks(src, before, tensor_map, [s], [d], row)


@SETTINGS
@given(
    src_layers=st.integers(1, 5),
    dst_layers=st.integers(1, 5),
    tpl=st.integers(1, 3),
    s0=st.integers(0, 6),
    d0=st.integers(0, 6),
    length=st.integers(1, 6),
)
def test_tensor_pairs_refuse_what_the_native_side_refuses(src_layers, dst_layers, tpl, s0, d0, length):
    """A range past its cache is LLM_PARAM_INVALID, never a pair out of range; a valid one maps layer
    ``s0 + i`` to ``d0 + i``, tensor by tensor."""
    src_range, dst_range = range(s0, s0 + length), range(d0, d0 + length)
    fits = s0 + length <= src_layers and d0 + length <= dst_layers
    if not fits:
        with pytest.raises(LLMException, match="out of range"):
            tensor_pairs(src_layers * tpl, dst_layers * tpl, src_range, dst_range, tpl)
        return
    pairs = tensor_pairs(src_layers * tpl, dst_layers * tpl, src_range, dst_range, tpl)
    assert pairs == [((s0 + i) * tpl + k, (d0 + i) * tpl + k) for i in range(length) for k in range(tpl)]


# -- local copies on real memory ----------------------------------------------------------------------


def _fake_cm(entries: dict[int, Cache]) -> SimpleNamespace:
    """What local_copy reads of a CacheManager: an entry by cache id and the endpoint's fault seam (none)."""
    by_id = {cid: SimpleNamespace(cache=c, addrs=c.tensor_addrs) for cid, c in entries.items()}
    return SimpleNamespace(
        entry=by_id.get,
        endpoint=SimpleNamespace(faults=FaultSeam()),
    )


class Native:
    """``Memory`` backed by a torch buffer, so the sim's ctypes copies write it; read back as bytes."""

    def __init__(self, tensors: int, nbytes: int, seed: int) -> None:
        self.model = Memory(tensors, nbytes, seed)
        self.storage = torch.frombuffer(bytearray(self.model.buf), dtype=torch.uint8).clone()
        base = self.storage.data_ptr()
        self.addrs = [base + a for a in self.model.addrs]

    def read(self) -> bytearray:
        n = self.storage.numel()
        return bytearray(ctypes.string_at(self.storage.data_ptr(), n))


def _cache(cache_id: int, mem: Native, tensors: int, batch: int, row: int, blocks: bool) -> Cache:
    desc = CacheDesc(tensors, [batch, row], DataType.DT_INT8)
    return Cache(cache_id, desc, mem.addrs, None, True, blocks)


@SETTINGS
@given(
    tensors=st.integers(1, 3),
    src_batch=st.integers(1, 4),
    dst_batch=st.integers(1, 4),
    src_row=st.integers(1, 40),
    dst_row=st.integers(1, 40),
    data=st.data(),
)
def test_copy_cache_writes_exactly_one_slot_range(tensors, src_batch, dst_batch, src_row, dst_row, data):
    seed = data.draw(st.integers(0, 2**32))
    si = data.draw(st.integers(0, src_batch - 1))
    di = data.draw(st.integers(0, dst_batch - 1))
    offset = data.draw(st.integers(0, src_row + 2))
    size = data.draw(st.sampled_from([-1, 1, 2, src_row, dst_row, src_row + 1]))
    _copy_cache_case(tensors, src_batch, dst_batch, src_row, dst_row, seed, si, di, offset, size)


def _copy_cache_case(tensors, src_batch, dst_batch, src_row, dst_row, seed, si, di, offset, size):
    src, dst = Native(tensors, src_batch * src_row, seed), Native(tensors, dst_batch * dst_row, seed + 1)
    src_cache = _cache(1, src, tensors, src_batch, src_row, False)
    dst_cache = _cache(2, dst, tensors, dst_batch, dst_row, False)
    cm = _fake_cm({1: src_cache, 2: dst_cache})
    # the native rule (CheckCopyParams): size -1 is the source slot less offset; it must fit both slots
    n = size if size != -1 else src_row - offset
    valid = 0 < n and offset + n <= min(src_row, dst_row)
    before = dst.read()
    if not valid:
        with pytest.raises(LLMException):
            local_copy.copy_cache(cm, dst_cache, src_cache, di, si, offset, size, None)
        assert dst.read() == before, "a refused copy_cache changed the destination"
        return
    local_copy.copy_cache(cm, dst_cache, src_cache, di, si, offset, size, None)
    expected = bytearray(before)
    for t in range(tensors):
        s_at = src.model.addrs[t] + si * src_row + offset
        d_at = dst.model.addrs[t] + di * dst_row + offset
        expected[d_at : d_at + n] = src.model.buf[s_at : s_at + n]
    assert dst.read() == expected
    assert src.read() == src.model.buf, "copy_cache changed its source"


@SETTINGS
@given(tensors=st.integers(1, 3), blocks=st.integers(2, 9), row=ROW_BYTES, data=st.data())
def test_copy_blocks_copies_each_source_to_its_destinations(tensors, blocks, row, data):
    """Disjoint sources and destinations, no destination twice (the case rule of CopyBlocksCase)."""
    order = data.draw(st.permutations(range(blocks)))
    nsrc = data.draw(st.integers(1, blocks - 1))
    sources, targets = order[:nsrc], list(order[nsrc:])
    copies: dict[int, list[int]] = {}
    for dst_block in data.draw(st.lists(st.sampled_from(targets), min_size=1, unique=True)):
        copies.setdefault(data.draw(st.sampled_from(sources)), []).append(dst_block)
    seed = data.draw(st.integers(0, 2**32))
    mem = Native(tensors, blocks * row, seed)
    cache = _cache(3, mem, tensors, blocks, row, True)
    local_copy.copy_blocks(_fake_cm({3: cache}), cache, copies)
    expected = bytearray(mem.model.buf)
    for t in range(tensors):
        base = mem.model.addrs[t]
        for s, dsts in copies.items():
            for d in dsts:
                expected[base + d * row : base + (d + 1) * row] = mem.model.buf[base + s * row : base + (s + 1) * row]
    assert mem.read() == expected


# -- kvtest's pattern checks -------------------------------------------------------------------------

DTYPES = st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.uint8])


def test_copy_cache_of_the_whole_slot_into_a_smaller_slot_is_refused():
    _copy_cache_case(1, 1, 1, 6, 5, 0, 0, 0, 0, -1)


@SETTINGS
@given(blocks=st.integers(1, 8), elems=st.integers(1, 9), dtype=DTYPES, data=st.data())
def test_with_rows_is_the_reference_copy(blocks, elems, dtype, data):
    """with_rows(base, source, src_rows, dst_rows): later pairs win; rows not listed keep base's bytes."""
    seed = data.draw(st.integers(0, 2**16))
    rows = data.draw(st.lists(st.tuples(st.integers(0, blocks - 1), st.integers(0, blocks - 1)), max_size=6))
    base = patterns.pattern([blocks, elems], dtype, seed=seed, tensor_index=0, side="d")
    source = patterns.pattern([blocks, elems], dtype, seed=seed, tensor_index=0, side="p")
    got = patterns.with_rows(base, source, src_rows=[s for s, _ in rows], dst_rows=[d for _, d in rows])
    row = elems * dtype.itemsize
    b, s = _raw(base), _raw(source)
    expected = bytearray(b)
    for sr, dr in rows:
        expected[dr * row : (dr + 1) * row] = s[sr * row : (sr + 1) * row]
    assert _raw(got) == expected
    assert _raw(base) == b, "with_rows changed its base"


def _raw(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


@SETTINGS
@given(
    tensors=st.integers(1, 4),
    blocks=st.integers(1, 6),
    elems=st.integers(1, 12),
    dtype=DTYPES,
    tpl=st.integers(1, 3),
    data=st.data(),
)
def test_check_all_names_exactly_the_bytes_that_differ(tensors, blocks, elems, dtype, tpl, data):
    """Any set of wrong bytes in any tensors: check_all raises naming every differing tensor, and for each
    its first differing block and byte, the differing counts and blocks, as the plain model says; no
    wrong byte: no error."""
    seed = data.draw(st.integers(0, 2**16))
    expected = [patterns.pattern([blocks, elems], dtype, seed=seed, tensor_index=t, side="p") for t in range(tensors)]
    actual = [e.clone() for e in expected]
    row = elems * dtype.itemsize
    total = blocks * row
    wrong = data.draw(st.lists(st.tuples(st.integers(0, tensors - 1), st.integers(0, total - 1)), unique=True,
                               max_size=6))
    for t, at in wrong:
        flat = actual[t].view(torch.uint8).reshape(-1)
        flat[at] ^= 0xFF
    if not wrong:
        patterns.check_all(expected, actual, name="prop", tensors_per_layer=tpl)
        return
    with pytest.raises(patterns.KVMismatch) as raised:
        patterns.check_all(expected, actual, name="prop", tensors_per_layer=tpl)
    found = {m.tensor_index: m for m in raised.value.mismatches}
    by_tensor: dict[int, list[int]] = {}
    for t, at in wrong:
        by_tensor.setdefault(t, []).append(at)
    assert sorted(found) == sorted(by_tensor)
    for t, offsets in by_tensor.items():
        m = found[t]
        first = min(offsets)
        bad_blocks = sorted({o // row for o in offsets})
        assert (m.block, m.offset_in_block, m.offset) == (first // row, first % row, first)
        assert m.layer == t // tpl and m.block_bytes == row and m.blocks == blocks
        assert m.differing_total == len(offsets)
        assert m.differing_in_block == sum(1 for o in offsets if o // row == first // row)
        assert list(m.differing_blocks) == bad_blocks[:16] and m.differing_block_count == len(bad_blocks)
        assert m.element == (first % row) // dtype.itemsize
        text = str(raised.value)
        assert f"tensor {t} (layer {t // tpl}, tensors_per_layer={tpl}), block {first // row} of {blocks}" in text


@SETTINGS
@given(blocks=st.integers(2, 8), elems=st.integers(8, 12), dtype=DTYPES, data=st.data())
def test_a_misplaced_block_is_named_as_one(blocks, elems, dtype, data):
    """A block holding another block's expected bytes is reported as holding that block (rows of 8+
    bytes: shorter pattern rows may repeat by chance)."""
    seed = data.draw(st.integers(0, 2**16))
    wrong_at, came_from = data.draw(st.lists(st.integers(0, blocks - 1), min_size=2, max_size=2, unique=True))
    expected = patterns.pattern([blocks, elems], dtype, seed=seed, tensor_index=0, side="p")
    actual = expected.clone()
    actual[wrong_at] = expected[came_from]
    found = patterns.compare(expected, actual, name="prop", tensor_index=0)
    assert found is not None and found.block == wrong_at
    assert found.holds_block == came_from


@SETTINGS
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    dtype=DTYPES,
    seed=st.integers(0, 2**64 - 1),
    sides=st.lists(st.sampled_from(["p", "d", "p1", "h"]), min_size=2, max_size=2, unique=True),
)
def test_patterns_never_repeat_a_row_across_tensors_and_sides(shape, dtype, seed, sides):
    """Every block row of every tensor of every side differs from every other one (rows of 8+ bytes: a
    shorter row has too few bits for the claim), so a misplaced row is always seen."""
    rows = []
    for side in sides:
        for t in range(3):
            p = patterns.pattern(shape, dtype, seed=seed, tensor_index=t, side=side)
            rows += [_raw(p[i]) for i in range(shape[0])]
    if len(rows[0]) >= 8:
        assert len(set(rows)) == len(rows)


# -- each property fails on a broken implementation (so the lane can find what it is for) -------------

_real = {"block_spans": block_spans, "tensor_pairs": tensor_pairs, "slot_to_blocks_spans": slot_to_blocks_spans,
         "expand": expand}


def _fails(test) -> str:
    """Run a property test without shrinking (the proof needs a failure, not the smallest one: shrinking
    took 10-25 s per test here); the first line of how it failed ('' if it passed)."""
    attr = "_hypothesis_internal_use_settings"  # where @settings keeps a test's settings (hypothesis 6)
    own = getattr(test, attr)
    setattr(test, attr, settings(own, phases=[Phase.explicit, Phase.generate]))
    try:
        test()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - an assertion, pytest's fail, or a group of them
        return (str(exc).splitlines() or [type(exc).__name__])[0]
    finally:
        setattr(test, attr, own)
    return ""


BROKEN = {
    "the last block of a list not moved": (
        "block_spans", lambda s, d, n: _real["block_spans"](s, d, n)[:-1],
        test_block_transfer_moves_exactly_the_listed_blocks_of_the_mapped_layers,
    ),
    "the destination layer range ignored (layers from 0)": (
        "tensor_pairs",
        lambda st_, dt, sr, dr, tpl: _real["tensor_pairs"](st_, dt, sr, None if dr is None else range(len(dr)), tpl),
        test_slot_transfer_moves_one_slot_of_the_mapped_layers,
    ),
    "a move one byte too long (into the next block or the guard)": (
        "expand", lambda *a: [(s, d, n + 1) for s, d, n in _real["expand"](*a)],
        test_block_transfer_moves_exactly_the_listed_blocks_of_the_mapped_layers,
    ),
    "the slot's pieces in the reverse order": (
        "slot_to_blocks_spans",
        lambda slot, sb, dst, bb, size=None: _real["slot_to_blocks_spans"](slot, sb, list(dst[: -(-sb // bb)])[::-1], bb),
        test_slot_to_blocks_spreads_one_slot_over_the_listed_blocks,
    ),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_address_properties_fail_on_broken_arithmetic(monkeypatch, name):
    attr, broken, test = BROKEN[name]
    monkeypatch.setitem(globals(), attr, broken)
    assert _fails(test), f"{test.__name__} passed with {name}"


def test_the_copy_blocks_property_fails_when_a_copy_is_skipped(monkeypatch):
    real_run = local_copy._run
    monkeypatch.setattr(local_copy, "_run", lambda moves: real_run(list(moves)[1:]))
    assert _fails(test_copy_blocks_copies_each_source_to_its_destinations)


def test_the_copy_cache_property_fails_when_the_offset_is_ignored_at_the_destination(monkeypatch):
    real_run = local_copy._run
    monkeypatch.setattr(local_copy, "_run", lambda moves: real_run([(s, d + 1, n) for s, d, n in moves]))
    assert _fails(test_copy_cache_writes_exactly_one_slot_range)


def test_the_checker_property_fails_on_a_checker_blind_to_the_last_byte_of_a_block(monkeypatch):
    """A checker that compares all but the last byte of each block (a cut word, say) is caught."""
    real_rows = patterns._rows
    monkeypatch.setattr(patterns, "_rows", lambda host, dim: real_rows(host, dim)[:, :-1])
    monkeypatch.setattr(patterns, "same_bytes", lambda a, b: False)
    assert _fails(test_check_all_names_exactly_the_bytes_that_differ)


def test_the_with_rows_property_fails_when_earlier_pairs_win(monkeypatch):
    real = patterns.with_rows

    def first_wins(base, source, *, src_rows, dst_rows, block_dim=0):
        pairs = list(dict(reversed(list(zip(dst_rows, src_rows)))).items())
        return real(base, source, src_rows=[s for _, s in pairs], dst_rows=[d for d, _ in pairs], block_dim=block_dim)

    monkeypatch.setattr(patterns, "with_rows", first_wins)
    assert _fails(test_with_rows_is_the_reference_copy)
