"""Which bytes a transfer moves: layer ranges to tensor pairs, block lists to byte offsets."""

from __future__ import annotations

from collections.abc import Sequence

from kvtest.backends.sim.async_transfer import check_layer_range
from kvtest.backends.sim.checks import UINT32_MAX, check_int, check_type
from kvtest.backends.sim.status import raise_param_invalid

#: (source offset, destination offset, bytes) inside one tensor
Span = tuple[int, int, int]


def tensor_pairs(
    src_tensors: int,
    dst_tensors: int,
    src_layer_range: range | None,
    dst_layer_range: range | None,
    tensor_num_per_layer: int,
) -> list[tuple[int, int]]:
    """(source tensor, destination tensor) pairs; layer *i* is tensors ``[i*tpl, (i+1)*tpl)``.

    Without ranges every tensor goes to the tensor of the same index.
    """
    tpl = check_int("tensor_num_per_layer", tensor_num_per_layer, 1, UINT32_MAX)
    src = check_layer_range("src_layer_range", src_layer_range)
    dst = check_layer_range("dst_layer_range", dst_layer_range)
    if src is None and dst is None:
        if src_tensors != dst_tensors:
            raise_param_invalid(
                f"num_tensors of src ({src_tensors}) and dst ({dst_tensors}) should be equal "
                "when no layer range is given."
            )
        return [(t, t) for t in range(src_tensors)]
    for count in (src_tensors, dst_tensors):  # data_cache_engine.cc CheckTensorIndices
        if count % tpl:
            raise_param_invalid(
                f"When using layer wise transfer, the tensor_num [{count}] of caches must be a multiple of "
                f"tensor_num_per_layer[{tpl}]."
            )
    src = src if src is not None else range(0, src_tensors // tpl)
    dst = dst if dst is not None else range(0, dst_tensors // tpl)
    if len(src) != len(dst):
        raise_param_invalid("src_layer_range and dst_layer_range should have the same length.")
    if src.stop * tpl > src_tensors:
        raise_param_invalid(f"src_layer_range {src} is out of range, src has {src_tensors // tpl} layers.")
    if dst.stop * tpl > dst_tensors:
        raise_param_invalid(f"dst_layer_range {dst} is out of range, dst has {dst_tensors // tpl} layers.")
    return [(s * tpl + k, d * tpl + k) for s, d in zip(src, dst) for k in range(tpl)]


def block_list(arg: str, value: Sequence[int]) -> list[int]:
    check_type(arg, value, list, tuple)
    return [check_int(f"{arg} item", v, 0, UINT32_MAX) for v in value]


def check_in_range(arg: str, indices: Sequence[int], count: int) -> None:
    for i in indices:
        if i >= count:
            raise_param_invalid(f"{arg} index {i} is out of range [0, {count}).")


def block_spans(src_blocks: Sequence[int], dst_blocks: Sequence[int], block_bytes: int) -> list[Span]:
    return [(s * block_bytes, d * block_bytes, block_bytes) for s, d in zip(src_blocks, dst_blocks)]


def slot_to_blocks_spans(
    src_slot: int, slot_bytes: int, dst_blocks: Sequence[int], block_bytes: int, size: int | None = None
) -> list[Span]:
    """A contiguous batch slot spread over destination blocks, one block's worth at a time."""
    total = slot_bytes if size is None else size
    chunks = -(-total // block_bytes) if block_bytes else 0
    if chunks > len(dst_blocks):
        raise_param_invalid(
            f"dst_blocks is too short: the source slot needs {chunks} blocks of {block_bytes} bytes, "
            f"but got {len(dst_blocks)}."
        )
    spans = []
    for j in range(chunks):
        n = min(block_bytes, total - j * block_bytes)
        spans.append((src_slot * slot_bytes + j * block_bytes, dst_blocks[j] * block_bytes, n))
    return spans


def expand(
    pairs: Sequence[tuple[int, int]],
    src_addrs: Sequence[int],
    dst_addrs: Sequence[int],
    spans: Sequence[Span],
) -> list[tuple[int, int, int]]:
    """Absolute (source address, destination address, bytes) for every tensor pair and span."""
    return [(src_addrs[s] + so, dst_addrs[d] + do, n) for s, d in pairs for so, do, n in spans]
