from __future__ import annotations

import ctypes
import hashlib
import re
import struct

import pytest
import torch

from kvtest import patterns
from kvtest.patterns import (
    KVMismatch,
    check,
    check_all,
    compare,
    digest,
    fill,
    pattern,
    same_bytes,
    with_rows,
    write_rows,
)

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.int8]
SHAPE = (4, 3, 8)  # 4 blocks of 24 elements
MiB = 1 << 20


# -- an independent reference: the scheme the module docstring documents, in plain Python ints ----

M64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x &= M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & M64
    return x ^ (x >> 31)


def _reference_mask(dtype: torch.dtype) -> int:
    """Floats lose the top exponent bit of every element; bools keep bit 0 of every byte."""
    if dtype == torch.bool:
        return int.from_bytes(b"\x01" * 8, "little")
    if not dtype.is_floating_point:
        return M64
    bits = 8 * dtype.itemsize
    cleared = sum(1 << (lane + bits - 2) for lane in range(0, 64, bits))
    return M64 ^ cleared


def reference_bytes(nbytes: int, dtype: torch.dtype, *, seed: int, tensor_index: int, side: str) -> bytes:
    """What ``pattern`` of ``nbytes`` bytes must hold, one word at a time: slow, obviously right."""
    key = hashlib.blake2b(f"kvtest/{seed % 2**64}/{side}/{tensor_index}".encode(), digest_size=16).digest()
    base_key, span_key = int.from_bytes(key[:8], "little"), int.from_bytes(key[8:], "little")
    golden, span, mask = 0x9E3779B97F4A7C15, 4096, _reference_mask(dtype)
    nwords = -(-nbytes // 8)
    base = [_splitmix64(base_key + (i + 1) * golden) & mask for i in range(min(nwords, span))]
    spans = [_splitmix64(span_key + (c + 1) * golden) & mask for c in range(-(-nwords // span))]
    # word w = base[w % span] ^ spans[w // span]: XOR each span of the base with its key repeated
    base_int = int.from_bytes(struct.pack(f"<{len(base)}Q", *base), "little")
    out = b"".join(
        (base_int ^ int.from_bytes(struct.pack("<Q", key) * len(base), "little")).to_bytes(8 * len(base), "little")
        for key in spans
    )
    return out[:nbytes]


def _bytes_of(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def matches_reference(t: torch.Tensor, *, seed: int, tensor_index: int, side: str) -> bool:
    nbytes = t.numel() * t.element_size()
    return _bytes_of(t) == reference_bytes(nbytes, t.dtype, seed=seed, tensor_index=tensor_index, side=side)


def _rows(t: torch.Tensor, block_dim: int = 0) -> list[bytes]:
    moved = t.movedim(block_dim, 0).contiguous()
    return [bytes(r.view(torch.uint8).flatten().tolist()) for r in moved]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_block_row_is_distinct_across_tensors_layers_seeds_and_sides(dtype):
    seen: dict[bytes, tuple[object, ...]] = {}
    for seed in (0, 1, 2**63 + 5):
        for side in ("p", "d"):
            for tensor_index in range(4):  # two layers of K and V
                t = pattern(SHAPE, dtype, seed=seed, tensor_index=tensor_index, side=side)
                for block, row in enumerate(_rows(t)):
                    where = (seed, side, tensor_index, block)
                    assert row not in seen, f"{where} repeats {seen[row]}"
                    seen[row] = where
    assert len(seen) == 3 * 2 * 4 * SHAPE[0]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pattern_is_deterministic_and_fill_writes_it(dtype):
    a = pattern(SHAPE, dtype, seed=7, tensor_index=1, side="d")
    b = pattern(SHAPE, dtype, seed=7, tensor_index=1, side="d")
    assert a.shape == SHAPE and a.dtype == dtype
    assert digest(a) == digest(b)
    target = torch.zeros(SHAPE, dtype=dtype)
    fill(target, seed=7, tensor_index=1, side="d")
    assert compare(a, target, name="t", tensor_index=1) is None


@pytest.mark.parametrize(("shape", "dtype", "seed", "tensor_index", "side", "hex_bytes"), [
    ((2, 8), torch.int8, 0, 0, "p", "393767cd1ce40468d9e47e83ba428a78"),
    # seeds are taken modulo 2**64; the float16 mask clears bit 6 of every high byte
    ((1, 4), torch.float16, 2**64 + 3, 5, "d", "071d3192510e7f36"),
])
def test_pattern_bytes_are_pinned(shape, dtype, seed, tensor_index, side, hex_bytes):
    # p and d may run different builds on different hosts: the bytes must never drift silently
    t = pattern(shape, dtype, seed=seed, tensor_index=tensor_index, side=side)
    assert bytes(t.view(torch.uint8).flatten().tolist()).hex() == hex_bytes
    assert t.equal(pattern(shape, dtype, seed=seed % 2**64, tensor_index=tensor_index, side=side))


REFERENCE_CASES = [
    ((4, 3, 8), torch.float16, 0),
    ((4, 3, 8), torch.bfloat16, 0),
    ((3, 5, 7), torch.float32, 0),
    ((2, 9), torch.float64, 0),
    ((8, 64), torch.bool, 0),
    ((5, 5), torch.float16, 0),  # 50 bytes: the last word is cut
    ((3, 5, 4), torch.float32, 1),  # block_dim 1: the bytes are block-row-major
    ((3, 5 * 32768 + 3), torch.int8, 0),  # rows across several 32 KiB spans, odd row length
    # rows of 2 MiB and more (nightly's 4 MiB rows): every byte, not just the first 2 MiB
    ((2, 2 * MiB + 12), torch.int8, 0),
    ((2, 2 * MiB), torch.float16, 0),
]


@pytest.mark.parametrize(("shape", "dtype", "block_dim"), REFERENCE_CASES,
                         ids=[f"{list(s)}-{d}-dim{b}" for s, d, b in REFERENCE_CASES])
def test_pattern_and_fill_match_an_independent_reference(shape, dtype, block_dim):
    # Source and expected of a transfer come from the same generator, so only a reference written
    # apart from it can tell a generator that repeats or skips content.
    where = {"seed": 20260801, "tensor_index": 3, "side": "d1"}
    t = pattern(shape, dtype, block_dim=block_dim, **where)
    rows = t.movedim(block_dim, 0)
    assert matches_reference(rows, **where)
    target = torch.zeros(shape, dtype=dtype)
    fill(target, block_dim=block_dim, **where)
    assert matches_reference(target.movedim(block_dim, 0), **where)


def test_fill_into_unaligned_memory_matches_the_reference():
    raw = torch.zeros(4 * 1000 + 1, dtype=torch.uint8)
    target = raw[1:].view(torch.int8).view(4, 1000)  # memory at an odd address, as a pool view can be
    assert target.data_ptr() % 8 != 0
    fill(target, seed=5, tensor_index=0, side="p")
    assert matches_reference(target, seed=5, tensor_index=0, side="p")
    assert raw[0] == 0


def test_large_pattern_digest_is_pinned():
    # A 2-row tensor with 3 MiB rows; the digest pins every byte against drift between builds.
    t = pattern((2, 3 * MiB // 2), torch.bfloat16, seed=7, tensor_index=1, side="p")
    assert digest(t) == hashlib.sha256(
        reference_bytes(6 * MiB, torch.bfloat16, seed=7, tensor_index=1, side="p")).hexdigest()
    assert digest(t) == "b0b424e88e6187fa28ffd4ea2bd4a192f28d3a1756147b6fbba94f4a97a33825"


def test_every_2_mib_of_a_long_row_differs():
    t = pattern((1, 6 * MiB), torch.int8, seed=1, tensor_index=0)
    row = _bytes_of(t)
    thirds = [row[i * 2 * MiB : (i + 1) * 2 * MiB] for i in range(3)]
    assert len(set(thirds)) == 3
    spans = {row[i : i + 32768] for i in range(0, len(row), 32768)}
    assert len(spans) == len(row) // 32768  # and every 32 KiB span differs from every other


def _repeat_first_2_mib(real):
    """A generator with the audit's bug: rows of 2 MiB and more repeat their first 2 MiB."""
    period = 2 * MiB // 8

    def write_words(words, first, base, spans, s0):
        real(words, first, base, spans, s0)
        if first:  # the bug is in whole tensors, written from word 0
            return
        for start in range(period, words.numel(), period):
            end = min(words.numel(), start + period)
            words[start:end] = words[: end - start].clone()

    return write_words


def test_the_reference_catches_a_generator_that_repeats_its_first_2_mib(monkeypatch):
    where = {"seed": 3, "tensor_index": 0, "side": "p"}
    shape = (2, 5 * MiB // 2)  # two fp16 rows of 5 MiB
    assert matches_reference(pattern(shape, torch.float16, **where), **where)
    monkeypatch.setattr(patterns, "_write_words_from", _repeat_first_2_mib(patterns._write_words_from))
    broken = pattern(shape, torch.float16, **where)
    # what a transfer test compares (fill vs pattern, both from the broken generator) still agrees ...
    filled = torch.empty(shape, dtype=torch.float16)
    fill(filled, **where)
    assert compare(broken, filled, name="x", tensor_index=0) is None
    # ... the reference does not
    assert not matches_reference(broken, **where)
    assert not matches_reference(broken[:1], **where)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_float_patterns_are_finite(dtype):
    t = pattern((64, 1024), dtype, seed=3, tensor_index=0)
    assert bool(torch.isfinite(t).all())


def test_bool_pattern_holds_only_valid_bools():
    t = pattern((8, 64), torch.bool, seed=3, tensor_index=0)
    assert set(t.view(torch.uint8).flatten().tolist()) == {0, 1}


@pytest.mark.parametrize("shape", [(5, 5), (3, 1), (2, 3, 7)])
def test_rows_whose_size_is_not_a_multiple_of_eight(shape):
    t = pattern(shape, torch.float16, seed=1, tensor_index=0)
    assert t.shape == shape
    assert len(set(_rows(t))) == shape[0]


def test_block_dim_other_than_zero():
    t = pattern((3, 5, 4), torch.float32, seed=1, tensor_index=0, block_dim=1)
    assert t.shape == (3, 5, 4)
    assert len(set(_rows(t, 1))) == 5
    broken = t.clone()
    broken[2, 3, 1] = 0.0
    found = compare(t, broken, name="cache", tensor_index=0, block_dim=1)
    assert found is not None and found.block == 3 and found.blocks == 5
    # within block 3 (a 3x4 slice, row-major) element [2, 1] is element 9
    assert found.element == 9 and found.offset_in_block == 36


def test_flipped_byte_is_reported_with_tensor_layer_block_and_offset():
    expected = pattern((4, 16), torch.float16, seed=11, tensor_index=3)
    actual = expected.clone()
    actual.view(torch.uint8)[2, 5] ^= 0x01
    with pytest.raises(KVMismatch) as info:
        check(expected, actual, name="d0 cache", tensor_index=3, tensors_per_layer=2)
    text = str(info.value)
    assert text.startswith("KV mismatch in d0 cache: tensor 3 (layer 1, tensors_per_layer=2), block 2 of 4")
    assert "first difference: byte 5 of block 2 (byte 69 of the tensor; element 2 of the block" in text
    assert "differing bytes: 1 of 32 in block 2, 1 of 128 in the tensor; 1 of 4 blocks differ: [2]" in text
    window = expected.view(torch.uint8)[2, 0:16].tolist()
    assert "    expected: " + " ".join(f"{b:02x}" for b in window) in text
    flipped = window[:]
    flipped[5] ^= 0x01
    assert "    actual:   " + " ".join(f"{b:02x}" for b in flipped) in text
    marker = next(line for line in text.splitlines() if "^^" in line)
    assert marker.index("^^") == len("    actual:   ") + 5 * 3
    assert "misplaced" not in text
    mismatch = info.value.mismatches[0]
    assert (mismatch.layer, mismatch.block, mismatch.offset, mismatch.differing_total) == (1, 2, 69, 1)


def test_swapped_blocks_are_reported_as_misplaced():
    expected = pattern((4, 3, 10), torch.float32, seed=5, tensor_index=0)
    actual = expected.clone()
    actual[1], actual[3] = expected[3].clone(), expected[1].clone()
    found = compare(expected, actual, name="k", tensor_index=0)
    assert found is not None
    text = str(found)
    assert "tensor 0 (layer 0, tensors_per_layer=2), block 1 of 4" in text
    assert "2 of 4 blocks differ: [1, 3]" in text
    assert "block 1 holds the bytes expected in block 3 (a misplaced block)" in text


def test_write_past_the_asked_rows_is_caught():
    before = pattern((4, 8), torch.bfloat16, seed=2, tensor_index=1, side="d")
    source = pattern((4, 8), torch.bfloat16, seed=2, tensor_index=1, side="p")
    expected = with_rows(before, source, src_rows=[0, 1], dst_rows=[0, 2])
    # a transfer that also wrote block 3 (one block too many)
    actual = with_rows(before, source, src_rows=[0, 1, 2], dst_rows=[0, 2, 3])
    with pytest.raises(KVMismatch, match=r"block 3 of 4 .*\n.*\n.*1 of 4 blocks differ: \[3\]"):
        check(expected, actual, name="d0 v", tensor_index=1)
    assert compare(expected, with_rows(before, source, src_rows=[0, 1], dst_rows=[0, 2]),
                   name="d0 v", tensor_index=1) is None


def test_p_and_d_contents_differ_everywhere():
    p = pattern((4, 64), torch.float16, seed=1, tensor_index=0, side="p")
    d = pattern((4, 64), torch.float16, seed=1, tensor_index=0, side="d")
    found = compare(p, d, name="x", tensor_index=0)
    assert found is not None and found.differing_block_count == 4
    assert found.differing_total > 0.9 * 4 * 128


def test_check_all_reports_every_differing_tensor():
    expected = [pattern((2, 8), torch.int8, seed=1, tensor_index=i) for i in range(4)]
    actual = [t.clone() for t in expected]
    actual[1][0, 0] += 1
    actual[3][1, 7] += 1
    with pytest.raises(KVMismatch) as info:
        check_all(expected, actual, name="d0 cache", tensors_per_layer=2)
    text = str(info.value)
    assert text.splitlines()[0] == "2 of 4 tensors differ: [1, 3]"
    assert "tensor 1 (layer 0, tensors_per_layer=2), block 0 of 2" in text
    assert "tensor 3 (layer 1, tensors_per_layer=2), block 1 of 2" in text
    assert [m.tensor_index for m in info.value.mismatches] == [1, 3]
    check_all(expected, [t.clone() for t in expected], name="d0 cache")


def test_mismatch_window_at_the_end_of_a_block():
    expected = pattern((2, 40), torch.int8, seed=1, tensor_index=0)
    actual = expected.clone()
    actual[1, 39] += 1
    found = compare(expected, actual, name="x", tensor_index=0)
    assert found is not None
    assert found.window_start == 24 and len(found.actual_window) == 16
    assert "bytes 24..39 of block 1:" in str(found)


def test_compare_refuses_different_shapes_and_dtypes():
    a = pattern((2, 4), torch.float16, seed=1, tensor_index=0)
    with pytest.raises(ValueError, match=r"d0 k: cannot compare torch.float16 \[2, 5\] with expected"):
        compare(a, torch.zeros(2, 5, dtype=torch.float16), name="d0 k", tensor_index=0)
    with pytest.raises(ValueError, match="cannot compare torch.float32"):
        compare(a, a.float(), name="d0 k", tensor_index=0)
    with pytest.raises(ValueError, match="block_dim 2 is out of range for a 2-dimensional tensor"):
        pattern((2, 4), torch.float16, seed=1, tensor_index=0, block_dim=2)


def test_with_rows_checks_its_lists():
    a = pattern((2, 4), torch.float16, seed=1, tensor_index=0)
    with pytest.raises(ValueError, match="src_rows has 1 entries but dst_rows has 2"):
        with_rows(a, a, src_rows=[0], dst_rows=[0, 1])


def test_digest():
    a = pattern((4, 16), torch.float32, seed=1, tensor_index=0)
    assert digest(a) == digest(a.clone())
    assert re.fullmatch(r"[0-9a-f]{64}", digest(a))
    b = a.clone()
    b.view(torch.uint8)[3, 63] ^= 0x80
    assert digest(a) != digest(b)
    assert digest(a.t()) == digest(a.t().contiguous())
    assert digest(torch.empty(0)) == digest(torch.empty(0, dtype=torch.int8))


def test_fast_equality_sees_every_byte():
    a = pattern((3, 40000), torch.float16, seed=1, tensor_index=0)
    assert same_bytes(a, a.clone())
    for at in (0, 12345, a.numel() * 2 - 1):
        b = a.clone()
        b.view(-1).view(torch.uint8)[at] ^= 0x20
        assert not same_bytes(a, b)
        found = compare(a, b, name="x", tensor_index=0)
        assert found is not None and found.offset == at and found.differing_total == 1
    assert same_bytes(a.t(), a.clone().t()) and not same_bytes(a.t(), b.t())
    # bytes, not values: -0.0 == 0.0 as floats, but a transfer that turned one into the other is wrong
    zeros = torch.zeros(2, 4)
    assert not same_bytes(zeros, -zeros)
    assert compare(zeros, -zeros, name="x", tensor_index=0) is not None
    assert not same_bytes(zeros, zeros.view(4, 2)) and not same_bytes(zeros, zeros.int())


ROWS_CASES = [c for c in REFERENCE_CASES if c[2] == 0 and c[1] != torch.bool]


@pytest.mark.parametrize(("shape", "dtype", "block_dim"), ROWS_CASES,
                         ids=[f"{list(s)}-{d}" for s, d, _ in ROWS_CASES])
def test_write_rows_makes_the_rows_with_rows_takes_from_the_whole_pattern(shape, dtype, block_dim):
    """write_rows makes only the moved rows of a source pattern (issue 27: an expected state without a
    second whole-cache pattern); it must give what with_rows does with the whole source, repeated
    destinations included (the later pair wins)."""
    n = shape[0]
    src_rows, dst_rows = [n - 1, 0, n // 2, 0], [0, n - 1, n - 1, n // 2]
    base = pattern(shape, dtype, seed=9, tensor_index=2, side="d")
    expected = with_rows(base, pattern(shape, dtype, seed=9, tensor_index=2, side="p"),
                         src_rows=src_rows, dst_rows=dst_rows)
    made = base.clone()
    write_rows(made, seed=9, tensor_index=2, side="p", src_rows=src_rows, dst_rows=dst_rows)
    assert same_bytes(expected, made)


def test_write_rows_that_ignored_the_row_offset_would_be_caught(monkeypatch):
    """The control: a range writer that always starts at byte 0 puts row 0's bytes in every moved row."""
    shape, dtype = (4, 3 * 32768 + 5), torch.int8
    base = pattern(shape, dtype, seed=9, tensor_index=2, side="d")
    expected = with_rows(base, pattern(shape, dtype, seed=9, tensor_index=2, side="p"),
                         src_rows=[3], dst_rows=[1])
    real = patterns._write_at
    monkeypatch.setattr(patterns, "_write_at", lambda flat, keys, mask, start, *base: real(flat, keys, mask, 0, *base))
    made = base.clone()
    write_rows(made, seed=9, tensor_index=2, side="p", src_rows=[3], dst_rows=[1])
    assert not same_bytes(expected, made)


def test_write_rows_refuses_what_it_cannot_write_in_place():
    with pytest.raises(ValueError, match="contiguous"):
        write_rows(torch.zeros(4, 6).t(), seed=1, tensor_index=0, side="p", src_rows=[0], dst_rows=[1])
    with pytest.raises(ValueError, match="entries"):
        write_rows(torch.zeros(4, 6), seed=1, tensor_index=0, side="p", src_rows=[0], dst_rows=[1, 2])


@pytest.mark.parametrize(("shape", "dtype", "block_dim"), ROWS_CASES,
                         ids=[f"{list(s)}-{d}" for s, d, _ in ROWS_CASES])
def test_a_pattern_that_skips_rows_writes_every_other_row_and_only_those(shape, dtype, block_dim, monkeypatch):
    """skip_rows (issue 27: an expected state writes the base only where no source row lands): every
    row outside it holds the whole pattern's bytes, and the skipped rows are left as the memory was
    (here a 0xA5 marker, so a row skipped by mistake, or written anyway, shows)."""
    n = shape[0]
    whole = pattern(shape, dtype, seed=9, tensor_index=2, side="d")
    monkeypatch.setattr(patterns.reused_memory, "empty",
                        lambda nbytes: torch.full((nbytes,), 0xA5, dtype=torch.uint8))
    for skip in ({0}, {n - 1}, {0, n - 1}, set(range(0, n, 2)), set(range(n)), {n, -1}):
        made = pattern(shape, dtype, seed=9, tensor_index=2, side="d", skip_rows=skip)
        for r in range(n):
            if r in skip:
                assert bool((made[r].contiguous().view(torch.uint8) == 0xA5).all()), (skip, r)
            else:
                assert same_bytes(made[r].contiguous(), whole[r].contiguous()), (skip, r)


def test_any_byte_range_of_a_pattern_is_made_alone_as_the_whole_pattern_holds_it():
    """_write_at (write_rows' and skip_rows' writer): a range of whole aligned words is written in place,
    partial spans at either end included; any other range is built aside. Every range equals the same
    bytes of the whole pattern, with the base words made by the call or given (too few are made anew)."""
    span = patterns.SPAN_WORDS * 8
    total = 3 * span + 40
    whole = pattern((total,), torch.uint8, seed=9, tensor_index=4, side="d").view(-1)
    keys, mask = patterns._tensor_keys(9, "d", 4), patterns._element_mask(torch.uint8)
    base = patterns._hashed(keys[0], 0, patterns.SPAN_WORDS, mask)
    ranges = [(0, 8), (8, 16), (0, span), (40, span), (span - 8, 16), (40, 2 * span + 24), (span, span),
              (2 * span + 8, span + 32), (total - 8, 8), (0, total), (3, 10), (1, total - 1), (span - 3, 7)]
    for start, n in ranges:
        for given in (None, base, base[:10]):
            aligned = torch.empty(n, dtype=torch.uint8)
            patterns._write_at(aligned, keys, mask, start, given)
            assert same_bytes(aligned, whole[start : start + n]), (start, n)
            odd = torch.empty(n + 1, dtype=torch.uint8)[1:]  # not 8-aligned: built aside
            patterns._write_at(odd, keys, mask, start, given)
            assert same_bytes(odd.contiguous(), whole[start : start + n]), (start, n, "unaligned")


def test_the_shared_span_words_are_never_written():
    """A span's base words are made once per key and shared by every fill, expected state and check
    after it (patterns._span_base): none of them may write into them."""
    patterns._span_base.cache_clear()
    for shape, dtype in (((4, 1000), torch.float16), ((3, patterns.SPAN_WORDS * 8 + 24), torch.uint8)):
        t = torch.empty(shape, dtype=dtype)
        fill(t, seed=3, tensor_index=1, side="p")
        expected = pattern(shape, dtype, seed=3, tensor_index=1, side="p", skip_rows=[1])
        write_rows(expected, seed=3, tensor_index=1, side="p", src_rows=[1], dst_rows=[1])
        assert same_bytes(expected, t)
    assert patterns._span_base.cache_info().currsize == 2  # both tensors went through shared words
    key = patterns._tensor_keys(3, "p", 1)[0]
    for dtype in (torch.float16, torch.uint8):
        mask = patterns._element_mask(dtype)
        hits = patterns._span_base.cache_info().hits
        kept = patterns._span_base(key, mask)
        assert patterns._span_base.cache_info().hits == hits + 1, "not the words the fills shared"
        assert torch.equal(kept, patterns._hashed_by_torch(key, 0, patterns.SPAN_WORDS, mask)), dtype
