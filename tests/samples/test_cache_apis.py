"""The local cache APIs no vendor sample calls: ``copy_cache`` and ``copy_blocks``.

No link: every role runs the body in its own process, on its own device, with its own contents
(``side`` = its role). What the real package does is in hicann/hixl
``src/python/llm_datadist/llm_datadist/v2/cache_manager.py`` (the checks) and
``src/llm_datadist/cache_mgr/cache_manager.cc`` (``CopyCache``, ``CheckCopyParams``,
``CopyCacheForBlocks``):

- ``copy_cache(dst, src, dst_batch_index, src_batch_index, offset, size)`` copies, on every tensor,
  ``size`` bytes (-1: the source slot less ``offset``) from ``offset`` in the source slot to ``offset``
  in the destination slot; slots may differ in size as long as the bytes fit both. Any placement pair
  is copied, so one case copies a device cache into a host-pool cache and one the other way.
- ``copy_blocks(cache, {src: [dst, ...]})`` copies blocks inside one blocks cache.
- Refusals: a blocks cache given to ``copy_cache`` and a non-blocks cache given to ``copy_blocks`` (the
  Python checks), an out-of-range batch index or block index (native LLM_PARAM_INVALID), a cache the
  native side does not know (``Cache.create_cpu_cache``, id -1: LLM_KV_CACHE_NOT_EXIST); none of them
  changes a byte.
"""

from __future__ import annotations

import re

import pytest
import torch

from kvtest.cases import CopyBlocksCase, CopyCacheCase, parametrize_by_type, pool_bytes
from kvtest.patterns import LazyTensors

P, D = 0, 1
MIB = 1 << 20

CASES = {
    "smoke": [
        # 510 bytes of the first slot into the last one of another size, from an offset of 250 bytes
        CopyCacheCase("bf16", 2, 3, 4, 512, 0, 3, offset=250, size=510, dst_row=768),
        # descending sources with gaps into interleaved destinations
        CopyBlocksCase("fp16", 4, 8, 512, ((7, (0,)), (5, (4,)), (3, (2,)))),
        # one source, the last block, into the first and another; 1021-byte blocks
        CopyBlocksCase("int8", 2, 5, 1021, ((4, (0, 2)),)),
    ],
    "nightly": [
        CopyCacheCase("int8", 2, 2, 3, 4096, 1, 2, dst_host=True),  # device -> host pool
        CopyCacheCase("fp32", 2, 2, 2, 1024, 0, 1, offset=1024, src_host=True),  # host pool -> device, the rest
        CopyCacheCase("fp16", 4, 2, 2, 1024, 0, 1),  # a whole slot into the other slot
        CopyBlocksCase("int8", 2, 16, 4096, tuple((i, (i + 8,)) for i in range(8))),
        CopyCacheCase("fp16", 16, 4, 4, 1 << 19, 3, 0, label="1MiB-slots"),
        CopyBlocksCase("bf16", 40, 32, 512 * 1024, tuple((i, (i + 16,)) for i in range(16)), "1MiB-blocks"),
    ],
    "stress": [
        CopyCacheCase("bf16", 80, 4, 4, 1 << 20, 1, 2, dst_host=True, label="GiB"),
        CopyBlocksCase("bf16", 80, 256, 64 * 1024, tuple((i, (i + 128,)) for i in range(128)), "GiB"),
    ],
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_by_type(metafunc, {"copy_case": CopyCacheCase, "blocks_case": CopyBlocksCase})


def _placement(api, host: bool):
    return api.Placement.HOST if host else api.Placement.DEVICE


def copied(case: CopyCacheCase, before: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``before`` (a contiguous tensor of the test's own, changed in place) after the copy: the native
    byte range of the source slot at the same offset of the destination slot."""
    out = before
    dst = out.view(torch.uint8).reshape(-1)
    src = source.contiguous().view(torch.uint8).reshape(-1)
    s = case.src_index * case.src_stride + case.offset
    d = case.dst_index * case.dst_stride + case.offset
    dst[d : d + case.copy_bytes] = src[s : s + case.copy_bytes]
    return out


@pytest.mark.kv(topology="1p1d")
def test_copy_cache(kv, datadist, copy_case: CopyCacheCase):
    case = copy_case
    host_pool = case.pool if case.src_host or case.dst_host else None
    node = datadist(P if kv.role == "p" else D, mem_pool=case.pool, host_mem_pool=host_pool)
    api = node.api
    n, dtype = case.num_tensors, case.torch_dtype
    src = node.allocate_cache(
        api.CacheDesc(n, case.src_shape, node.datatype(dtype), _placement(api, case.src_host))
    )
    dst = node.allocate_cache(
        api.CacheDesc(n, case.dst_shape, node.datatype(dtype), _placement(api, case.dst_host))
    )
    # made one tensor at a time whenever read: for the fill, and again for the checks
    source = node.expected_lazily(n, case.src_shape, dtype, side=kv.role)
    before = node.expected_lazily(n, case.dst_shape, dtype, side=kv.role, first_index=n)
    src_views = node.pool_views(src, source)
    dst_views = node.pool_views(dst, before)
    with node.measure("copy_cache", case.moved_bytes):
        node.cm.copy_cache(
            dst,
            src,
            dst_batch_index=case.dst_index,
            src_batch_index=case.src_index,
            offset=case.offset,
            size=case.size,
        )
    expected = LazyTensors(n, lambda i: copied(case, before[i], source[i]))
    node.check(expected, dst_views, name="destination cache after copy_cache")
    node.check(source, src_views, name="source cache after copy_cache")
    node.deallocate(src)
    node.deallocate(dst)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_copy_blocks(kv, datadist, blocks_case: CopyBlocksCase):
    case = blocks_case
    node = datadist(P if kv.role == "p" else D)
    api = node.api
    n, dtype = case.num_tensors, case.torch_dtype
    desc = api.CacheDesc(n, case.shape, node.datatype(dtype), api.Placement.DEVICE)
    tensors = node.tensors(n, case.shape, dtype, side=kv.role)
    cache = node.register_blocks_cache(desc, tensors)
    with node.measure("copy_blocks", case.moved_bytes):
        node.cm.copy_blocks(cache, case.copy_info)
    # the copies read the cache as it was before the call: rows of the role's own pattern
    expected = node.expected_after_rows(n, case.shape, dtype, base=kv.role, source=kv.role,
                                        src_rows=case.src_rows, dst_rows=case.dst_rows)
    node.check(expected, tensors, name="blocks cache after copy_blocks")
    node.unregister(cache)
    node.finalize()


def _refused(api, call, code: str, message: str) -> None:
    with pytest.raises(api.LLMException, match=re.escape(message)) as raised:
        call()
    assert raised.value.status_code == getattr(api.LLMStatusCode, code), str(raised.value)


@pytest.mark.kv(topology="1p1d")
def test_copy_refusals(kv, datadist):
    """The documented refusals of copy_cache and copy_blocks; none of them changes a byte. Every cache
    a refused call names (the blocks cache, the pool cache, the host cache) holds a pattern of its own
    before, checked after; a refused copy inside one cache names two different slots, so a copy that
    went ahead would show."""
    shape, dtype, n = [4, 256], torch.float16, 2
    node = datadist(P if kv.role == "p" else D, mem_pool=pool_bytes(4 * 512, tensors=2 * n))
    api = node.api
    desc = api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE)
    blocks_tensors = node.tensors(n, shape, dtype, side=kv.role)
    blocks = node.register_blocks_cache(desc, blocks_tensors)
    cache = node.allocate_cache(api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE))
    contents = node.expected(n, shape, dtype, side=kv.role, first_index=n)
    views = node.pool_views(cache, contents)
    host_contents = node.expected(n, shape, dtype, side=kv.role, first_index=2 * n)
    host = [t.clone() for t in host_contents]
    cpu_cache = api.Cache.create_cpu_cache(
        api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.HOST), [t.data_ptr() for t in host]
    )
    kv.step("copy refusals")
    invalid = "LLM_PARAM_INVALID"
    _refused(
        api,
        lambda: node.cm.copy_cache(cache, blocks),
        invalid,
        "param check failed, src cache can not be blocks cache.",
    )
    _refused(
        api,
        lambda: node.cm.copy_cache(blocks, cache),
        invalid,
        "param check failed, dst cache can not be blocks cache.",
    )
    _refused(
        api,
        lambda: node.cm.copy_cache(cache, cache, dst_batch_index=0, src_batch_index=4),
        invalid,
        "[copy_cache] failed, error code is LLMStatusCode.LLM_PARAM_INVALID",
    )
    _refused(
        api,
        lambda: node.cm.copy_cache(cache, cache, dst_batch_index=1, src_batch_index=0, offset=8, size=512),
        invalid,
        "[copy_cache] failed, error code is LLMStatusCode.LLM_PARAM_INVALID",
    )
    _refused(
        api,
        lambda: node.cm.copy_blocks(cache, {0: [1]}),
        invalid,
        "param check failed, cache should be blocks cache.",
    )
    _refused(
        api,
        lambda: node.cm.copy_blocks(blocks, {0: [4]}),
        invalid,
        "[copy_blocks] failed, error code is LLMStatusCode.LLM_PARAM_INVALID",
    )
    _refused(
        api,
        lambda: node.cm.copy_blocks(cpu_cache, {0: [1]}),
        "LLM_KV_CACHE_NOT_EXIST",
        "[copy_blocks] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST",
    )
    node.check(
        node.expected(n, shape, dtype, side=kv.role), blocks_tensors, name="blocks cache after refusals"
    )
    node.check(contents, views, name="cache after refusals")
    node.check(host_contents, host, name="host cache after refusals")
    node.unregister(blocks)
    node.deallocate(cache)
    node.finalize()
