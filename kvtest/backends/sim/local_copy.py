"""Local copies inside one process: ``copy_cache`` (a batch slot) and ``copy_blocks`` (blocks of one cache).

What the real package does, and where it says so (paths in hicann/hixl):

- ``src/python/llm_datadist/llm_datadist/v2/cache_manager.py`` (``copy_cache``, ``copy_blocks``): the
  Python checks and messages; neither cache may be a blocks cache for ``copy_cache``; ``copy_blocks``
  needs a blocks cache and sends ``(cache_id, cache_id, 0, 0, 0, -1, INVALID, [(src, dst), ...])``, one
  pair per destination of ``{src: [dst, ...]}`` in dict order, to the same native ``copy_cache_v2``.
- ``src/llm_datadist/cache_mgr/cache_manager.cc`` (``CacheManager::CopyCache``, ``CopyCacheForContinuous``,
  ``CopyCacheForBlocks``, ``CheckCopyParams``): both caches are looked up by cache id
  (LLM_KV_CACHE_NOT_EXIST when one is unknown, e.g. a ``Cache.create_cpu_cache`` with id -1), their
  tensor counts must match, a slot is ``stride = tensor_size / batch_size`` bytes, the copy takes
  ``size`` bytes (``-1``: the source stride less ``offset``) from ``src + src_batch_index * src_stride +
  offset`` to ``dst + dst_batch_index * dst_stride + offset``, and must fit both strides; block indices
  must be below the cache's block count. Every placement pair is copied (``ResolveCopyKind``: host to
  host, host to device, device to host, device to device); the sim's memory is all CPU memory.

Fault injection: ``flip@copy_cache`` / ``flip@copy_blocks`` (only when named) corrupt the first byte
the copy wrote, so the sample tests' byte checks can be shown to fail.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvtest.backends.sim.cache import Cache
from kvtest.backends.sim.checks import INT64_MAX, UINT32_MAX, UINT64_MAX, check_int, check_type
from kvtest.backends.sim.status import LLMStatusCode, native_error, raise_param_invalid

if TYPE_CHECKING:
    from kvtest.backends.sim.cache_manager import CacheManager

__all__ = ["copy_blocks", "copy_cache"]

_INVALID_ID = UINT64_MAX


def _addrs(cm: CacheManager, api: str, cache: Cache, params: str) -> list[int]:
    """The tensor addresses of the cache the native side knows by ``cache.cache_id``."""
    entry = cm.entry(cache.cache_id)
    if entry is None:
        raise native_error(api, LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, params)
    # a deallocated pool cache whose keys are still pending keeps its memory (ext_ref_count 0)
    return list(entry.cache.tensor_addrs or entry.addrs)


def _flip_first(cm: CacheManager, api: str, moves: Sequence[tuple[int, int, int]]) -> None:
    if moves and cm.endpoint.faults.corrupts(api):
        cell = ctypes.c_uint8.from_address(moves[0][1])
        cell.value ^= 0xFF


def _run(moves: Sequence[tuple[int, int, int]]) -> None:
    for src, dst, nbytes in moves:
        ctypes.memmove(dst, src, nbytes)


def copy_cache(
    cm: CacheManager,
    dst: Any,
    src: Any,
    dst_batch_index: int,
    src_batch_index: int,
    offset: int,
    size: int,
    req_id: int | None,
) -> None:
    """``CacheManager.copy_cache``: one batch slot (from ``offset``, ``size`` bytes or the rest) of every
    tensor of ``src`` into ``dst``'s slot, as ``CopyCacheForContinuous`` does."""
    api = "copy_cache"
    check_type("dst", dst, Cache)
    check_type("src", src, Cache)
    check_int("dst_batch_index", dst_batch_index, 0, UINT32_MAX)
    check_int("src_batch_index", src_batch_index, 0, UINT32_MAX)
    check_int("offset", offset, 0, UINT64_MAX)
    check_int("size", size, -(2**63), INT64_MAX)
    if src.is_blocks_cache:
        raise_param_invalid("param check failed, src cache can not be blocks cache.")
    if dst.is_blocks_cache:
        raise_param_invalid("param check failed, dst cache can not be blocks cache.")
    if not (size == -1 or size > 0):
        raise_param_invalid(
            f"[copy_cache] param check failed, size ({size}) is invalid, should be = -1 or > 0"
        )
    if req_id is not None:
        check_int("req_id", req_id, 0, UINT64_MAX)
    rid = _INVALID_ID if req_id is None else req_id
    params = (
        f"param = ({dst.cache_id}, {src.cache_id}, {dst_batch_index}, {src_batch_index}, {offset}, {size}, "
        f"{rid}, [])"
    )
    src_addrs = _addrs(cm, api, src, params)
    dst_addrs = _addrs(cm, api, dst, params)
    if len(src_addrs) != len(dst_addrs):
        raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, params)
    sd, dd = src.cache_desc, dst.cache_desc
    src_stride, dst_stride = sd.slot_bytes, dd.slot_bytes
    bad = (
        src_batch_index >= sd.batch_size
        or dst_batch_index >= dd.batch_size
        or (offset > 0 and (offset >= src_stride or offset >= dst_stride))
    )
    nbytes = size if size != -1 else src_stride - offset
    if bad or nbytes > src_stride - offset or nbytes > dst_stride - offset:
        raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, params)
    src_at = src_batch_index * src_stride + offset
    dst_at = dst_batch_index * dst_stride + offset
    moves = [(s + src_at, d + dst_at, nbytes) for s, d in zip(src_addrs, dst_addrs)]
    _run(moves)
    _flip_first(cm, api, moves)


def copy_blocks(cm: CacheManager, cache: Any, copy_block_info: Any) -> None:
    """``CacheManager.copy_blocks``: inside one blocks cache, block ``src`` to each of its ``dst`` blocks,
    on every tensor, as ``CopyCacheForBlocks`` does."""
    api = "copy_blocks"
    check_type("cache", cache, Cache)
    check_type("copy_block_info", copy_block_info, dict)
    for key, value in copy_block_info.items():
        if not isinstance(key, int):
            raise TypeError(f"copy_block_info dict key only support {int}, but got {type(key)}.")
        if not isinstance(value, list):
            raise TypeError(f"copy_block_info dict value only support {list}, but got {type(value)}.")
        for item in value:
            if not isinstance(item, int):
                raise TypeError(f"dict value only support {int}, but got {type(item)}.")
    if not cache.is_blocks_cache:
        raise_param_invalid("param check failed, cache should be blocks cache.")
    pairs = [(s, d) for s, dsts in copy_block_info.items() for d in dsts]
    params = f"cache id is:{cache.cache_id}"
    addrs = _addrs(cm, api, cache, params)
    desc = cache.cache_desc
    count, stride = desc.batch_size, desc.slot_bytes
    if not pairs:
        return  # the native side copies slot 0 onto itself: nothing changes
    if any(not 0 <= s < count or not 0 <= d < count for s, d in pairs):
        raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, params)
    moves = [(a + s * stride, a + d * stride, stride) for a in addrs for s, d in pairs]
    _run(moves)
    _flip_first(cm, api, moves)
