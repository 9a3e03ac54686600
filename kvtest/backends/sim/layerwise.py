"""The bytes one layer of ``transfer_cache_async`` moves, as the native layer-wise job computes them.

Followed: hicann/hixl ``src/llm_datadist/data_transfer/layer_wise_transfer_job.cc``
(``LayerWiseTransferJob::Prepare``, ``GenerateCacheToCacheTask``, ``GenerateCacheToBlocksTask``,
``GenerateBlocksToBlocksTask``, ``ValidateRemoteCache``) with the block config the Python layer sends
(``TransferCacheJob.transfer_layer`` in ``src/python/llm_datadist/llm_datadist/v2/llm_utils.py``:
``(dst_block_memory_size or 0, src_block_indices or [], dst_block_indices or [])``).

- No destination blocks: cache to cache. One stride (a batch slot; for a blocks cache, whose native
  batch size is 1, one block) from ``batch_index * stride`` to the destination address.
- Destination blocks, no source blocks: cache to blocks. ``block_mem_size`` must be > 0 and below the
  source tensor size; piece ``j`` is ``block_mem_size`` bytes from ``batch_index * stride + j *
  block_mem_size`` to destination block ``dst_blocks[j]`` (at ``dst_blocks[j] * block_mem_size``), and
  the last piece is cut to ``tensor_size % block_mem_size`` when that is not 0. The pieces are counted
  by the destination list, not by the slot: ``ceil(tensor_size / block_mem_size)`` must be at least
  ``len(dst_blocks)``.
- Both: blocks to blocks, one stride per pair (contiguous runs merge), ``block_mem_size`` 0 or the stride.
- With a cache key (remote cache accessible) the remote cache is checked first: a slot index within its
  batch size, or destination blocks within its block count and ``block_mem_size`` 0 or its stride.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvtest.backends.sim.layout import Span
from kvtest.backends.sim.status import LLMException, LLMStatusCode, native_error, raise_param_invalid

__all__ = ["NativeLayout", "check_async_block_args", "layer_spans", "validate_remote"]

API = "transfer_cache_async"


@dataclass(frozen=True)
class NativeLayout:
    """A cache as the native ``CacheEntry`` sees it: a blocks cache has batch size 1 and ``num_blocks``
    blocks of ``stride`` bytes; a cache has ``batch_size`` slots of ``stride`` bytes and no blocks."""

    batch_size: int
    num_blocks: int
    stride: int

    @classmethod
    def of(cls, blocks: bool, count: int, stride: int) -> NativeLayout:
        return cls(1, count, stride) if blocks else cls(count, 0, stride)

    @property
    def tensor_size(self) -> int:
        return self.stride * (self.num_blocks or self.batch_size)


def _invalid(details: str) -> LLMException:
    return native_error(API, LLMStatusCode.LLM_PARAM_INVALID, details)


def check_async_block_args(
    src_blocks: Sequence[int], dst_blocks: Sequence[int], block_mem_size: int | None, src_batch_index: int
) -> None:
    """The Python layer's block checks (``transfer_cache_async``, ``TransferCacheJob.check_transfer_config``
    in ``v2/llm_utils.py``), raised before the worker starts."""
    if src_blocks:
        if not dst_blocks:
            raise_param_invalid("transfer from blocks to cache is not supported")
        if len(src_blocks) != len(dst_blocks):
            raise_param_invalid(
                f"num_block_indices mismatches, src_num = {len(src_blocks)}, dst_num = {len(dst_blocks)}"
            )
        if src_batch_index != 0:
            raise_param_invalid(
                f"Invalid TransferConfig, src_batch_index ({src_batch_index}) != 0 while src is blocks"
            )
    elif dst_blocks and block_mem_size is None:
        raise_param_invalid("dst_block_memory_size must be set when transfer from cache to blocks")
    if not dst_blocks and block_mem_size not in (None, 0):
        raise_param_invalid(
            f"dst_block_memory_size ({block_mem_size}) is neither None nor 0 while dst is not blocks"
        )


def validate_remote(
    remote: NativeLayout, dst_batch_index: int, block_mem_size: int, dst_blocks: Sequence[int]
) -> None:
    """``ValidateRemoteCache`` (the layer index is checked by the caller's tensor pairing)."""
    if not dst_blocks:
        if dst_batch_index >= remote.batch_size:
            raise _invalid(
                f"batch index[{dst_batch_index}] is out of range[0, {remote.batch_size}) of remote cache"
            )
        return
    if max(dst_blocks) >= remote.num_blocks:
        raise _invalid(f"dst block index[{max(dst_blocks)}] is out of range [0, {remote.num_blocks})")
    if block_mem_size not in (0, remote.stride):
        raise _invalid(
            f"dst_block_memory_size[{block_mem_size}] is not equal to stride[{remote.stride}] of remote cache"
        )


def layer_spans(
    local: NativeLayout,
    batch_index: int,
    block_mem_size: int,
    src_blocks: Sequence[int],
    dst_blocks: Sequence[int],
) -> list[Span]:
    """(source offset, destination offset, bytes) within one tensor of the layer: ``Prepare``."""
    if not dst_blocks:
        if batch_index >= local.batch_size:
            raise _invalid(f"batch index[{batch_index}] is out of range[0, {local.batch_size})")
        return [(batch_index * local.stride, 0, local.stride)]
    if not src_blocks:
        size = local.tensor_size
        if not 0 < block_mem_size < size:
            raise _invalid(
                f"block_mem_size[{block_mem_size}] must > 0 and < tensor size[{size}] when transfer from "
                "continuous cache to blocks"
            )
        if batch_index >= local.batch_size:
            raise _invalid(f"batch index[{batch_index}] is out of range[0, {local.batch_size})")
        remainder = size % block_mem_size
        pieces = size // block_mem_size + (1 if remainder else 0)
        if pieces < len(dst_blocks):
            raise _invalid(
                f"The number[{pieces}] after splitting contiguous memory by size[{block_mem_size}] < the "
                f"dst_block num[{len(dst_blocks)}]"
            )
        offset = batch_index * local.stride
        last = len(dst_blocks) - 1
        return [
            (
                offset + j * block_mem_size,
                d * block_mem_size,
                remainder if j == last and remainder else block_mem_size,
            )
            for j, d in enumerate(dst_blocks)
        ]
    if local.num_blocks == 0:
        raise _invalid("check failed, request expect local cache is blocks")
    if len(src_blocks) != len(dst_blocks):
        raise _invalid(f"src_block num:{len(src_blocks)} not match dst_block num:{len(dst_blocks)}")
    if block_mem_size not in (0, local.stride):
        raise _invalid(f"block_mem_size[{block_mem_size}] is not match cache stride:{local.stride}")
    for s in src_blocks:
        if s >= local.num_blocks:
            raise _invalid(f"src block index[{s}] is out of range [0, {local.num_blocks})")
    return [(s * local.stride, d * local.stride, local.stride) for s, d in zip(src_blocks, dst_blocks)]
