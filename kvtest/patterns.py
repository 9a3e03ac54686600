"""Deterministic KV-cache contents and byte-for-byte checks.

Every (seed, side, tensor, block row, byte offset) maps to its own bytes through a counter-based
hash (splitmix64), so a block that lands in the wrong row, the wrong tensor or the wrong process is
caught as surely as a flipped bit. A *block row* is index ``i`` along ``block_dim`` (the batch
dimension of the cache; for a blocks cache, the block index). Its bytes are the slice
``tensor.select(block_dim, i)`` in row-major order, which for ``block_dim=0`` is exactly its memory.

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
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "KVMismatch",
    "Mismatch",
    "check",
    "check_all",
    "compare",
    "digest",
    "fill",
    "pattern",
    "with_rows",
]

_MASK64 = (1 << 64) - 1


def _signed(value: int) -> int:
    """A 64-bit pattern as the int64 torch stores (torch int64 arithmetic wraps)."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_ROW_STEP = _signed(0xD1B54A32D192ED03)
# Words hashed per in-place pass; about 2 MiB of int64, so each pass stays in cache.
_CHUNK_WORDS = 1 << 18
_WINDOW = 16


def _mix_(z: torch.Tensor, tmp: torch.Tensor) -> None:
    """splitmix64's finaliser, in place; ``>>`` on int64 is arithmetic, so mask to a logical shift."""
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


def _tensor_key(seed: int, side: str, tensor_index: int) -> int:
    text = f"kvtest/{seed & _MASK64}/{side}/{tensor_index}".encode()
    return _signed(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little"))


def _generate(out: torch.Tensor, key: int, mask: int | None) -> None:
    """Fill a uint8 ``[rows, row_bytes]`` tensor: word ``j`` of row ``r`` is splitmix64 of its counter.

    Works chunk by chunk so every pass stays in cache and nothing as large as ``out`` is allocated.
    """
    nrows, row_bytes = out.shape
    nwords = -(-row_bytes // 8)
    direct = row_bytes % 8 == 0
    tmp = torch.empty(_CHUNK_WORDS, dtype=torch.int64)
    buf = None if direct else torch.empty(_CHUNK_WORDS, dtype=torch.int64)
    counters = torch.arange(1, nwords + 1, dtype=torch.int64).mul_(_GOLDEN)
    if nwords >= _CHUNK_WORDS:
        spans = [(r, r + 1, a, min(nwords, a + _CHUNK_WORDS)) for r in range(nrows)
                 for a in range(0, nwords, _CHUNK_WORDS)]
    else:
        step = _CHUNK_WORDS // nwords
        spans = [(r, min(nrows, r + step), 0, nwords) for r in range(0, nrows, step)]
    for r0, r1, a, b in spans:
        row_keys = torch.arange(r0, r1, dtype=torch.int64).mul_(_ROW_STEP).add_(key)
        _mix_(row_keys, tmp[: r1 - r0])
        if buf is None:
            z = out[r0:r1].view(torch.int64)[:, a:b]
        else:
            z = buf[: (r1 - r0) * nwords].view(r1 - r0, nwords)
        torch.add(counters[a:b].unsqueeze(0), row_keys.unsqueeze(1), out=z)
        _mix_(z, tmp[: z.numel()].view(z.shape))
        if mask is not None:
            z.bitwise_and_(mask)
        if buf is not None:
            out[r0:r1].copy_(z.view(torch.uint8)[:, :row_bytes])


def _block_dim(ndim: int, block_dim: int) -> int:
    if ndim == 0:
        raise ValueError("a 0-dimensional tensor has no block rows")
    if not -ndim <= block_dim < ndim:
        raise ValueError(f"block_dim {block_dim} is out of range for a {ndim}-dimensional tensor")
    return block_dim % ndim


def pattern(
    shape: Sequence[int],
    dtype: torch.dtype,
    *,
    seed: int,
    tensor_index: int,
    side: str = "p",
    block_dim: int = 0,
) -> torch.Tensor:
    """The host tensor a KV tensor holds after :func:`fill` with the same arguments.

    :param seed: the run seed; any int (taken modulo 2**64).
    :param tensor_index: the tensor's index in its cache (``layer * tensors_per_layer + k``).
    :param side: a salt telling one process's content from another's (``"p"``, ``"d"``, ``"p1"``...).
    :param block_dim: the dimension whose index is the block (batch) row.
    """
    dim = _block_dim(len(shape), block_dim)
    moved = [shape[dim], *shape[:dim], *shape[dim + 1 :]]
    nrows = int(moved[0])
    row_bytes = dtype.itemsize
    for size in moved[1:]:
        row_bytes *= int(size)
    raw = torch.empty((nrows, row_bytes), dtype=torch.uint8)
    if raw.numel():
        _generate(raw, _tensor_key(seed, side, tensor_index), _element_mask(dtype))
    return raw.view(dtype).reshape(moved).movedim(0, dim)


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

    ``tensors_per_layer`` does not change the content (see the module docstring); it is accepted so a
    ``fill`` call can take the same keywords as the :func:`check` that verifies it.
    """
    del tensors_per_layer
    expected = pattern(tensor.shape, tensor.dtype, seed=seed, tensor_index=tensor_index, side=side,
                       block_dim=block_dim)
    with torch.no_grad():
        tensor.copy_(expected)


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
    result = base.detach().cpu().clone()
    src = source.detach().cpu()
    with torch.no_grad():
        for s, d in zip(src_rows, dst_rows):
            result.select(dim, d).copy_(src.select(dim, s))
    return result


def _rows(tensor: torch.Tensor, dim: int) -> torch.Tensor:
    host = tensor.detach()
    if host.device.type != "cpu":
        host = host.cpu()
    host = host.movedim(dim, 0).contiguous()
    return host.view(torch.uint8).reshape(host.shape[0], -1) if host.numel() else host.view(torch.uint8)


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
    exp = _rows(expected, dim)
    act = _rows(actual, dim)
    if torch.equal(exp, act):
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
    found = [m for i, (e, a) in enumerate(zip(expected, actual))
             if (m := compare(e, a, name=name, tensor_index=i, tensors_per_layer=tensors_per_layer,
                              block_dim=block_dim)) is not None]
    if found:
        raise KVMismatch(found, checked=len(expected))


def digest(tensor: torch.Tensor) -> str:
    """SHA-256 (hex) of the tensor's bytes in row-major order: cheap to send between processes."""
    host = tensor.detach()
    if host.device.type != "cpu":
        host = host.cpu()
    host = host.contiguous()
    nbytes = host.numel() * host.element_size()
    h = hashlib.sha256()
    if nbytes:
        h.update(memoryview((ctypes.c_char * nbytes).from_address(host.data_ptr())))
    return h.hexdigest()
