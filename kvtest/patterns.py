"""Deterministic KV-cache contents and byte-for-byte checks.

Every (seed, side, tensor, block row, byte offset) maps to its own bytes, so a block that lands in
the wrong row, the wrong tensor or the wrong process is caught as surely as a flipped bit. A *block
row* is index ``i`` along ``block_dim`` (the batch dimension of the cache; for a blocks cache, the
block index). Its bytes are the slice ``tensor.select(block_dim, i)`` in row-major order, which for
``block_dim=0`` is exactly its memory.

How the bytes are made, cheaply enough to run at memory speed. Seen as little-endian 64-bit words
(word ``w`` is bytes ``8w .. 8w+7`` of the block-row-major layout), a tensor is cut into spans of
:data:`SPAN_WORDS` words (32 KiB). Word ``w`` is ``base[w % SPAN_WORDS] XOR span[w // SPAN_WORDS]``,
where ``base`` (one word per offset in a span) and ``span`` (one word per span) are splitmix64 of a
counter under two keys that blake2b derives from (seed, side, tensor index). Writing a tensor is one
XOR pass over its memory; hashing costs one word per 32 KiB. Two words of a tensor differ unless two
random 64-bit values collide: words at different offsets of a span differ in ``base``, words of
different spans in ``span``, and another tensor or process has other keys. A tensor's content
depends only on its byte count, not on its shape, and a longer tensor starts with a shorter one.

Decisions worth knowing:

- Floating-point patterns never hold NaN or Inf: the top exponent bit of every element is cleared
  (values stay below 2 in magnitude). Checks compare bytes, so NaN payloads would be harmless on
  CPU, but a device copy or a backend that canonicalises NaN would turn a correct transfer into a
  false mismatch, and finite values print readably in reports. ``torch.bool`` patterns hold only
  0 and 1, the only valid bool bytes. Other dtypes use all bits.
- Content depends on ``tensor_index`` (the index within the cache), not on the layer: layer ``l``
  is tensors ``[l * tpl, (l + 1) * tpl)``, so distinct tensors already mean distinct layers.
- Hash words are laid out little-endian (every CPU torch runs on).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import struct
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import cast, overload

import torch

from kvtest.host import reused_memory
from kvtest.results.metrics import phase

__all__ = [
    "KVMismatch",
    "LazyTensors",
    "Mismatch",
    "check",
    "check_all",
    "compare",
    "digest",
    "fill",
    "pattern",
    "same_bytes",
    "with_rows",
    "write_rows",
]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores (torch int64 arithmetic wraps)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
#: words per span: the base holds one hashed word per offset in a span, the span keys one per span
SPAN_WORDS = 4096
_WINDOW = 16


def _mix_(z: torch.Tensor) -> None:
    """splitmix64's finaliser, in place; ``>>`` on int64 is arithmetic, so mask to a logical shift."""
    tmp = torch.empty_like(z)
    for shift, mult in ((30, _MIX1), (27, _MIX2), (31, 0)):
        torch.bitwise_right_shift(z, shift, out=tmp)
        tmp.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(tmp)
        if mult:
            z.mul_(mult)


def _element_mask(dtype: torch.dtype) -> int | None:
    """An AND mask over one 64-bit word that keeps every element of ``dtype`` finite (or a valid bool)."""
    if dtype == torch.bool:
        return _signed(int.from_bytes(b"\x01" * 8, "little"))
    if dtype.is_floating_point:
        part = dtype.itemsize
    elif dtype.is_complex:
        part = dtype.itemsize // 2
    else:
        return None
    if part > 8 or 8 % part:
        return None
    one = (_MASK64 >> (64 - 8 * part)) & ~(1 << (8 * part - 2))
    word = 0
    for i in range(8 // part):
        word |= one << (8 * part * i)
    return _signed(word)


def _tensor_keys(seed: int, side: str, tensor_index: int) -> tuple[int, int]:
    """The (base, span) keys of one tensor of one process."""
    text = f"kvtest/{seed & _MASK64}/{side}/{tensor_index}".encode()
    digest = hashlib.blake2b(text, digest_size=16).digest()
    return _signed(int.from_bytes(digest[:8], "little")), _signed(int.from_bytes(digest[8:], "little"))


def _hashed(key: int, first: int, count: int, mask: int | None) -> torch.Tensor:
    """splitmix64 of counters ``first + 1 .. first + count`` under ``key``, masked: what :func:`_parts`
    makes for base offsets (``first`` 0) or span keys (``first`` the first span).

    Callers only read the result: a span's base words are kept (:func:`_span_base`) and shared."""
    if first == 0 and count <= SPAN_WORDS and count > _FEW_WORDS:
        return _span_base(key, mask)[:count]
    if count <= _FEW_WORDS:
        words = [_splitmix_word(key, c, mask) for c in range(first + 1, first + count + 1)]
        return torch.frombuffer(bytearray(struct.pack(f"<{count}q", *words)), dtype=torch.int64)
    return _hashed_by_torch(key, first, count, mask)


#: up to this many words are hashed in Python: the 14 torch operations of a call cost about 44 us
#: whatever its size, Python about 3 us for one word and 1 us for each more; a tensor under 32 KiB
#: needs one span word, and a test fills, expects and checks dozens of them
_FEW_WORDS = 16


def _splitmix_word(key: int, counter: int, mask: int | None) -> int:
    """:func:`_hashed_by_torch`'s word for one counter, in Python's unbounded ints."""
    z = (counter * _GOLDEN + key) & _MASK64
    z = ((z ^ (z >> 30)) * _MIX1) & _MASK64
    z = ((z ^ (z >> 27)) * _MIX2) & _MASK64
    z ^= z >> 31
    if mask is not None:
        z &= mask & _MASK64
    return _signed(z)


@functools.lru_cache(maxsize=256)
def _span_base(key: int, mask: int | None) -> torch.Tensor:
    """The base words of a whole span under ``key``: every pattern of a tensor (its fill, the expected
    states built from it, its check) starts from them; kept for the last 256 keys (8 MiB)."""
    return _hashed_by_torch(key, 0, SPAN_WORDS, mask)


def _hashed_by_torch(key: int, first: int, count: int, mask: int | None) -> torch.Tensor:
    z = torch.arange(first + 1, first + count + 1, dtype=torch.int64)
    z.mul_(_GOLDEN)
    z += key
    _mix_(z)
    if mask is not None:
        z.bitwise_and_(mask)
    return z


def _parts(keys: tuple[int, int], nwords: int, mask: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The base (one word per offset in a span) and the span keys of a tensor of ``nwords`` words."""
    return (_hashed(keys[0], 0, min(nwords, SPAN_WORDS), mask),
            _hashed(keys[1], 0, -(-nwords // SPAN_WORDS), mask))


def _write(flat: torch.Tensor, keys: tuple[int, int], mask: int | None) -> None:
    """Write the pattern into a 1-D contiguous CPU uint8 tensor: in place, in one pass per word.

    Bytes ``8w .. 8w+7`` are word ``w`` (little-endian); a last partial word is cut to fit.
    """
    nbytes = flat.numel()
    if not nbytes:
        return
    nwords = -(-nbytes // 8)
    base, spans = _parts(keys, nwords, mask)
    whole = nbytes // 8
    if flat.data_ptr() % 8 == 0:
        _write_words_from(flat[: whole * 8].view(torch.int64), 0, base, spans, 0)
        if whole < nwords:
            last = torch.empty(1, dtype=torch.int64)
            last[0] = base[whole % SPAN_WORDS] ^ spans[whole // SPAN_WORDS]
            flat[whole * 8 :].copy_(last.view(torch.uint8)[: nbytes - whole * 8])
    else:  # an unaligned view (memory registered elsewhere): build aligned, then copy the bytes
        words = torch.empty(nwords, dtype=torch.int64)
        _write_words_from(words, 0, base, spans, 0)
        flat.copy_(words.view(torch.uint8)[:nbytes])


def _write_at(
    flat: torch.Tensor, keys: tuple[int, int], mask: int | None, start: int, base: torch.Tensor | None = None
) -> None:
    """Write bytes ``start .. start + flat.numel()`` of the pattern under ``keys`` into ``flat`` (a 1-D
    contiguous CPU uint8 tensor). A word's value depends only on its index, so any byte range of a
    tensor's pattern can be made alone: :func:`_write` is this with ``start`` 0. ``base``: the keys' base
    words when the caller made them already (any length that covers the range's offsets in a span).

    A range of whole, aligned words is written in place, in one pass; any other is built aside and copied.
    """
    nbytes = flat.numel()
    if not nbytes:
        return
    w0, w1 = start // 8, -(-(start + nbytes) // 8)
    s0, s1 = w0 // SPAN_WORDS, -(-w1 // SPAN_WORDS)
    if base is None or len(base) < min(w1, SPAN_WORDS):
        base = _hashed(keys[0], 0, min(w1, SPAN_WORDS), mask)
    spans = _hashed(keys[1], s0, s1 - s0, mask)
    if start % 8 == 0 and nbytes % 8 == 0 and flat.data_ptr() % 8 == 0:
        _write_words_from(flat.view(torch.int64), w0, base, spans, s0)
        return
    words = torch.empty(w1 - w0, dtype=torch.int64)
    _write_words_from(words, w0, base, spans, s0)
    flat.copy_(words.view(torch.uint8)[start - 8 * w0 : start - 8 * w0 + nbytes])


def _write_words_from(
    words: torch.Tensor, first: int, base: torch.Tensor, spans: torch.Tensor, s0: int
) -> None:
    """Words ``first .. first + len(words)`` of a pattern into the 1-D int64 ``words``: word ``w`` is
    ``base[w % SPAN_WORDS] ^ spans[w // SPAN_WORDS - s0]``; the partial spans at either end, then the
    whole ones between them in one call."""
    n, at, w = words.numel(), 0, first
    head = min(n, -w % SPAN_WORDS)
    if head:
        o = w % SPAN_WORDS
        torch.bitwise_xor(base[o : o + head], spans[w // SPAN_WORDS - s0], out=words[:head])
        at, w = head, w + head
    full = (n - at) // SPAN_WORDS
    if full:
        s = w // SPAN_WORDS - s0
        torch.bitwise_xor(base[:SPAN_WORDS].view(1, SPAN_WORDS), spans[s : s + full].view(full, 1),
                          out=words[at : at + full * SPAN_WORDS].view(full, SPAN_WORDS))
        at, w = at + full * SPAN_WORDS, w + full * SPAN_WORDS
    if at < n:
        torch.bitwise_xor(base[: n - at], spans[w // SPAN_WORDS - s0], out=words[at:])


def write_rows(
    tensor: torch.Tensor,
    *,
    seed: int,
    tensor_index: int,
    side: str,
    src_rows: Sequence[int],
    dst_rows: Sequence[int],
) -> None:
    """Rows ``dst_rows[i]`` of ``tensor`` := rows ``src_rows[i]`` of :func:`pattern` of ``tensor``'s shape
    and dtype (block dimension 0), made row by row: ``with_rows(tensor, pattern(...), ...)`` in place,
    without the whole source pattern. Later pairs win when ``dst_rows`` repeats an index."""
    if len(src_rows) != len(dst_rows):
        raise ValueError(f"src_rows has {len(src_rows)} entries but dst_rows has {len(dst_rows)}")
    if tensor.device.type != "cpu" or not tensor.is_contiguous() or tensor.dim() == 0:
        raise ValueError("write_rows needs a contiguous CPU tensor with a block dimension 0")
    keys, mask = _tensor_keys(seed, side, tensor_index), _element_mask(tensor.dtype)
    flat = tensor.view(-1).view(torch.uint8) if tensor.numel() else tensor.view(torch.uint8)
    row = flat.numel() // max(int(tensor.shape[0]), 1)
    base = _hashed(keys[0], 0, SPAN_WORDS, mask)  # a span's offsets, for every row
    with phase("expect"), torch.no_grad():
        for s, d in zip(src_rows, dst_rows):
            _write_at(flat[d * row : (d + 1) * row], keys, mask, s * row, base)


def _block_dim(ndim: int, block_dim: int) -> int:
    if ndim == 0:
        raise ValueError("a 0-dimensional tensor has no block rows")
    if not -ndim <= block_dim < ndim:
        raise ValueError(f"block_dim {block_dim} is out of range for a {ndim}-dimensional tensor")
    return block_dim % ndim


def _moved(shape: Sequence[int], dim: int) -> list[int]:
    return [int(shape[dim]), *map(int, shape[:dim]), *map(int, shape[dim + 1 :])]


def pattern(
    shape: Sequence[int],
    dtype: torch.dtype,
    *,
    seed: int,
    tensor_index: int,
    side: str = "p",
    block_dim: int = 0,
    skip_rows: Collection[int] = (),
) -> torch.Tensor:
    """The host tensor a KV tensor holds after :func:`fill` with the same arguments.

    :param seed: the run seed; any int (taken modulo 2**64).
    :param tensor_index: the tensor's index in its cache (``layer * tensors_per_layer + k``).
    :param side: a salt telling one process's content from another's (``"p"``, ``"d"``, ``"p1"``...).
    :param block_dim: the dimension whose index is the block (batch) row.
    :param skip_rows: block rows left unwritten (their bytes unspecified), for a caller that writes
        them next (an expected state whose moved rows come from another pattern): less to write.
    """
    dim = _block_dim(len(shape), block_dim)
    moved = _moved(shape, dim)
    with phase("fill"):
        raw = reused_memory.empty(math.prod(moved) * dtype.itemsize)
        keys, mask = _tensor_keys(seed, side, tensor_index), _element_mask(dtype)
        skipped = {r for r in skip_rows if 0 <= r < moved[0]}
        if not skipped:
            _write(raw, keys, mask)
        else:
            row = raw.numel() // moved[0]
            base = _hashed(keys[0], 0, SPAN_WORDS, mask)
            for first, end in _runs(moved[0], skipped):
                _write_at(raw[first * row : end * row], keys, mask, first * row, base)
    return raw.view(dtype).reshape(moved).movedim(0, dim)


def _runs(count: int, skipped: Collection[int]) -> Iterator[tuple[int, int]]:
    """The ``[first, end)`` runs of ``range(count)`` outside ``skipped``."""
    first = 0
    for r in sorted(skipped):
        if first < r:
            yield first, r
        first = r + 1
    if first < count:
        yield first, count


def fill(
    tensor: torch.Tensor,
    *,
    seed: int,
    tensor_index: int,
    side: str = "p",
    block_dim: int = 0,
    tensors_per_layer: int = 2,
) -> None:
    """Write :func:`pattern` into ``tensor`` (any device; the copy is byte-exact).

    A contiguous host tensor with ``block_dim`` 0 is written in place, in one pass; anything else gets
    the pattern built on the host and copied in. ``tensors_per_layer`` does not change the content
    (see the module docstring); it is accepted so a ``fill`` call can take the same keywords as the
    :func:`check` that verifies it.
    """
    del tensors_per_layer
    dim = _block_dim(tensor.dim(), block_dim)
    with phase("fill"), torch.no_grad():
        if tensor.device.type == "cpu" and dim == 0 and tensor.is_contiguous():
            _write(tensor.reshape(-1).view(torch.uint8), _tensor_keys(seed, side, tensor_index),
                   _element_mask(tensor.dtype))
            return
        tensor.copy_(pattern(tensor.shape, tensor.dtype, seed=seed, tensor_index=tensor_index, side=side,
                             block_dim=block_dim))


def with_rows(
    base: torch.Tensor,
    source: torch.Tensor,
    *,
    src_rows: Sequence[int],
    dst_rows: Sequence[int],
    block_dim: int = 0,
) -> torch.Tensor:
    """A copy of ``base`` whose rows ``dst_rows[i]`` hold ``source``'s rows ``src_rows[i]``.

    This is the expected state after a block transfer: copied rows from the source, every other row
    as it was before. Later pairs win when ``dst_rows`` repeats an index, as a sequential copy would.
    """
    if len(src_rows) != len(dst_rows):
        raise ValueError(f"src_rows has {len(src_rows)} entries but dst_rows has {len(dst_rows)}")
    dim = _block_dim(base.dim(), block_dim)
    with phase("expect"), torch.no_grad():
        base = base.detach().cpu()
        if base.is_contiguous():
            result = reused_memory.empty(base.numel() * base.element_size()).view(base.dtype).view(base.shape)
            result.copy_(base)
        else:
            result = base.clone()
        src = source.detach().cpu()
        for s, d in zip(src_rows, dst_rows):
            result.select(dim, d).copy_(src.select(dim, s))
    return result


class LazyTensors(Sequence[torch.Tensor]):
    """``count`` tensors, each made by ``make(i)`` when read (anew at every read, nothing kept).

    For an expected state that is checked tensor by tensor (:func:`check_all` reads each once): only
    the tensor being compared is in memory, and its memory is the previous one's, freed and reused,
    instead of a whole cache of freshly touched pages.
    """

    def __init__(self, count: int, make: Callable[[int], torch.Tensor]) -> None:
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        self._count = count
        self._make = make

    def __len__(self) -> int:
        return self._count

    @overload
    def __getitem__(self, index: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, index: slice) -> list[torch.Tensor]: ...

    def __getitem__(self, index: int | slice) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._count))]
        if not -self._count <= index < self._count:
            raise IndexError(f"tensor {index} of {self._count}")
        return self._make(index % self._count)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self._make(i) for i in range(self._count))


def _host(tensor: torch.Tensor) -> torch.Tensor:
    host = tensor.detach()
    return host.cpu() if host.device.type != "cpu" else host


def _rows(host: torch.Tensor, dim: int) -> torch.Tensor:
    host = host.movedim(dim, 0).contiguous()
    return host.view(torch.uint8).reshape(host.shape[0], -1) if host.numel() else host.view(torch.uint8)


def _load_memcmp() -> Callable[[int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError, TypeError):  # no C library to load by that name (e.g. Windows)
        return None
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return cast(Callable[[int, int, int], int], fn)


#: libc's memcmp: compares at memory speed and releases the GIL while it runs
_MEMCMP = _load_memcmp()


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors of one shape and dtype hold the same bytes: the fast equality.

    Contiguous host tensors are compared as memory (``memcmp``), others through byte views.
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nbytes = a.numel() * a.element_size()
    if not nbytes:
        return True
    on_host = a.device.type == "cpu" and b.device.type == "cpu"  # memcmp reads host memory only
    if _MEMCMP is not None and on_host and a.is_contiguous() and b.is_contiguous():
        return _MEMCMP(a.data_ptr(), b.data_ptr(), nbytes) == 0
    return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def _hex(data: bytes) -> str:
    return " ".join(f"{b:02x}" for b in data)


def _value(data: bytes, dtype: torch.dtype) -> str:
    try:
        value = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).item()
    except (RuntimeError, TypeError, ValueError):
        return "0x" + data[::-1].hex()
    return f"{value:.6g}" if isinstance(value, float) else repr(value)


@dataclass(frozen=True)
class Mismatch:
    """Where an actual KV tensor first differs from the expected one, and how much differs.

    Offsets count bytes of a block row in row-major order (see the module docstring); ``offset`` is
    ``block * block_bytes + offset_in_block``, the memory offset when ``block_dim`` is 0.
    """

    name: str
    tensor_index: int
    tensors_per_layer: int
    dtype: str
    block_dim: int
    block: int
    blocks: int
    block_bytes: int
    offset_in_block: int
    #: index of the element holding the first differing byte, within the block
    element: int
    differing_in_block: int
    differing_total: int
    differing_blocks: tuple[int, ...]
    differing_block_count: int
    window_start: int
    expected_window: bytes
    actual_window: bytes
    expected_value: str
    actual_value: str
    #: the expected block whose bytes the first differing block holds, when it holds one
    holds_block: int | None

    @property
    def layer(self) -> int:
        return self.tensor_index // self.tensors_per_layer

    @property
    def offset(self) -> int:
        return self.block * self.block_bytes + self.offset_in_block

    @property
    def total_bytes(self) -> int:
        return self.blocks * self.block_bytes

    def __str__(self) -> str:
        listed = ", ".join(str(b) for b in self.differing_blocks)
        if self.differing_block_count > len(self.differing_blocks):
            listed += ", ..."
        lines = [
            f"KV mismatch in {self.name}: tensor {self.tensor_index} (layer {self.layer}, "
            f"tensors_per_layer={self.tensors_per_layer}), block {self.block} of {self.blocks} "
            f"(block_dim={self.block_dim}, {self.block_bytes} bytes per block, {self.dtype})",
            f"  first difference: byte {self.offset_in_block} of block {self.block} "
            f"(byte {self.offset} of the tensor; element {self.element} of the block: "
            f"expected {self.expected_value}, actual {self.actual_value})",
            f"  differing bytes: {self.differing_in_block} of {self.block_bytes} in block {self.block}, "
            f"{self.differing_total} of {self.total_bytes} in the tensor; "
            f"{self.differing_block_count} of {self.blocks} blocks differ: [{listed}]",
        ]
        if self.holds_block is not None:
            lines.append(f"  block {self.block} holds the bytes expected in block {self.holds_block} "
                         f"(a misplaced block)")
        end = self.window_start + len(self.expected_window)
        marks = "".join("^^ " if e != a else "   "
                        for e, a in zip(self.expected_window, self.actual_window)).rstrip()
        lines += [
            f"  bytes {self.window_start}..{end - 1} of block {self.block}:",
            f"    expected: {_hex(self.expected_window)}",
            f"    actual:   {_hex(self.actual_window)}",
            f"              {marks}",
        ]
        return "\n".join(lines)


class KVMismatch(AssertionError):
    """KV bytes differ from what the test expected; ``str()`` is the full report.

    :ivar mismatches: one :class:`Mismatch` per differing tensor, in tensor order.
    """

    def __init__(self, mismatches: Sequence[Mismatch], checked: int = 1) -> None:
        self.mismatches = list(mismatches)
        text = "\n".join(str(m) for m in self.mismatches)
        if checked > 1:
            indices = ", ".join(str(m.tensor_index) for m in self.mismatches)
            text = f"{len(self.mismatches)} of {checked} tensors differ: [{indices}]\n{text}"
        super().__init__(text)


def compare(
    expected: torch.Tensor,
    actual: torch.Tensor,
    *,
    name: str,
    tensor_index: int,
    tensors_per_layer: int = 2,
    block_dim: int = 0,
) -> Mismatch | None:
    """Compare raw bytes; ``None`` when identical, otherwise where and how they differ.

    Tensors may live on any device (they are copied to the host). A shape or dtype difference is a
    bug in the test, not in the transfer, and raises ``ValueError``.
    """
    if expected.shape != actual.shape or expected.dtype != actual.dtype:
        raise ValueError(f"{name}: cannot compare {actual.dtype} {list(actual.shape)} with expected "
                         f"{expected.dtype} {list(expected.shape)}")
    if tensors_per_layer < 1:
        raise ValueError(f"tensors_per_layer must be at least 1, got {tensors_per_layer}")
    dim = _block_dim(expected.dim(), block_dim)
    exp_host, act_host = _host(expected), _host(actual)
    if same_bytes(exp_host, act_host):
        return None
    exp = _rows(exp_host, dim)
    act = _rows(act_host, dim)
    if torch.equal(exp, act):  # equal bytes in another memory layout
        return None
    diff = exp != act
    per_block = diff.sum(dim=1)
    bad = torch.nonzero(per_block).flatten()
    block = int(bad[0])
    block_bytes = exp.shape[1]
    offset = int(torch.nonzero(diff[block])[0])
    start = max(0, min(offset - _WINDOW // 2, block_bytes - _WINDOW))
    end = min(block_bytes, start + _WINDOW)
    itemsize = expected.dtype.itemsize
    elem = offset // itemsize * itemsize
    same = torch.nonzero((exp == act[block]).all(dim=1)).flatten()
    return Mismatch(
        name=name,
        tensor_index=tensor_index,
        tensors_per_layer=tensors_per_layer,
        dtype=str(expected.dtype).removeprefix("torch."),
        block_dim=dim,
        block=block,
        blocks=exp.shape[0],
        block_bytes=block_bytes,
        offset_in_block=offset,
        element=offset // itemsize,
        differing_in_block=int(per_block[block]),
        differing_total=int(per_block.sum()),
        differing_blocks=tuple(int(b) for b in bad[:16]),
        differing_block_count=bad.numel(),
        window_start=start,
        expected_window=bytes(exp[block, start:end].tolist()),
        actual_window=bytes(act[block, start:end].tolist()),
        expected_value=_value(bytes(exp[block, elem : elem + itemsize].tolist()), expected.dtype),
        actual_value=_value(bytes(act[block, elem : elem + itemsize].tolist()), expected.dtype),
        holds_block=int(same[0]) if same.numel() else None,
    )


def check(
    expected: torch.Tensor,
    actual: torch.Tensor,
    *,
    name: str,
    tensor_index: int,
    tensors_per_layer: int = 2,
    block_dim: int = 0,
) -> None:
    """:func:`compare`, raising :class:`KVMismatch` (an ``AssertionError``) with the report."""
    with phase("check"):
        found = compare(expected, actual, name=name, tensor_index=tensor_index,
                        tensors_per_layer=tensors_per_layer, block_dim=block_dim)
    if found is not None:
        raise KVMismatch([found])


def check_all(
    expected: Sequence[torch.Tensor],
    actual: Sequence[torch.Tensor],
    *,
    name: str,
    tensors_per_layer: int = 2,
    block_dim: int = 0,
) -> None:
    """Check every tensor of a cache (tensor ``i`` of ``actual`` against ``expected[i]``).

    Raises one :class:`KVMismatch` reporting every differing tensor, so a layer-wide fault shows
    as such rather than as its first tensor.
    """
    if len(expected) != len(actual):
        raise ValueError(f"{name}: {len(actual)} tensors given, {len(expected)} expected")
    found = []
    with phase("check"):
        for i, a in enumerate(actual):
            # one expected tensor alive at a time: a LazyTensors' next one reuses this one's memory
            e = expected[i]
            m = compare(e, a, name=name, tensor_index=i, tensors_per_layer=tensors_per_layer,
                        block_dim=block_dim)
            del e
            if m is not None:
                found.append(m)
    if found:
        raise KVMismatch(found, checked=len(expected))


def digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensor's bytes in row-major order: cheap to send between processes."""
    host = _host(tensor).contiguous()
    nbytes = host.numel() * host.element_size()
    h = hashlib.sha256()
    if nbytes:
        h.update(memoryview((ctypes.c_char * nbytes).from_address(host.data_ptr())))
    return h.hexdigest()
