"""Two-role flows of the APIs no vendor sample reaches, byte for byte, on the real behaviour.

Each test follows what hicann/hixl does (``src/python/llm_datadist/llm_datadist/v2/*.py`` and the C++
under ``src/llm_datadist/``; the file named at each test):

- ``test_allocate_blocks_cache``: blocks caches from the memory pools of both roles; d pulls p's
  blocks; after ``deallocate_blocks_cache`` the key is gone (LLM_KV_CACHE_NOT_EXIST) and a cache larger
  than the pool is LLM_OUT_OF_MEMORY (``CacheManager::Allocate``/``Deallocate``, cache_mgr/cache_manager.cc).
- ``test_transfer_cache_async_block_indices``: ``src_block_indices``/``dst_block_indices`` move exactly
  those blocks of the layers (``GenerateBlocksToBlocksTask``, data_transfer/layer_wise_transfer_job.cc).
- ``test_transfer_cache_async_to_blocks``: from a slot of a non-blocks cache into blocks with
  ``dst_block_memory_size`` (``GenerateCacheToBlocksTask``). A ``BlocksCacheKey`` destination takes
  only source slot 0 (``TransferWithCacheKeyConfig``, v2/llm_types.py); another slot goes through a
  ``CacheKeyByIdAndIndex`` naming the blocks cache.
- ``test_transfer_cache_async_by_id``: ``TransferWithCacheKeyConfig(CacheKeyByIdAndIndex)``, slot to
  slot (``GenerateCacheToCacheTask``, ``FillRemoteLayerAddrs``).
- ``test_transfer_cache_async_raw_addrs``: ``TransferConfig`` with raw destination addresses over a
  two-sided link (``TransferCacheJob.transfer_layer``, v2/llm_utils.py: PushType.NO_CACHE_KEY).
- ``test_pull_cache_by_id``: ``pull_cache(CacheKeyByIdAndIndex)`` as remote-cache-accessible mode
  requires (v2/cache_manager.py); a slot pulled by id can be pulled again.
- ``test_pull_cache_prefix``: prefix-id CacheKeys survive their pulls, req-id keys do not, and
  ``remove_cache_key`` ends a prefix key (``SendState::QueryCacheEntryAndOffset``, fsm/send_state.cc).
- ``test_pull_cache_host``: host (``Placement.HOST``) pool caches pulled device -> host and
  host -> device; host -> host is LLM_FEATURE_NOT_ENABLED (``DataCacheEngine::PullCache``,
  ``SendState::ResolveTransferType``, ``H2DDataTransferJob``).
- ``test_sync_kv_timeout``: a pull that cannot finish within ``sync_kv_timeout`` fails with
  LLM_TIMEOUT (``CommEntity::BatchTransfer``: ``aclrtSynchronizeStreamWithTimeout``).
- ``test_mix_role``: ``LLMRole.MIX`` on both ends; in cache-manager mode the role restricts nothing
  (``LLMLinkManager::SwitchRole`` ignores it), so the MIX node both pushes and pulls.

Layer ranges of ``transfer_cache_async`` here start at layer 0 on the source: the real worker maps a
destination layer by the absolute source index (``list(dst_layer_range)[layer_i]``), so a source range
starting above 0 hits that upstream bug (issue 11, point 2), which is not what these tests are about.
"""

from __future__ import annotations

import re

import pytest
import torch

from kvtest.cases import (
    BlocksCase,
    HostPullCase,
    LayersCase,
    MixRoleCase,
    SlotLayersCase,
    ToBlocksCase,
    parametrize_by_type,
    pool_bytes,
)
from kvtest.patterns import LazyTensors, with_rows

#: one-sided flows (link_clusters): the push samples' ids
P, D = 0, 1
#: two-sided flows (link with a rank table): the pull samples' ids
GA_P, GA_D = 1, 2
UINT64_MAX = 2**64 - 1
MIB = 1 << 20
#: bytes a pull moves in the timeout test: sure to take more than 1 ms on the backend
TIMEOUT_BYTES = {"sim": 32 * MIB, "npu": 1024 * MIB}

CASES = {
    "smoke": [
        BlocksCase("fp16", 4, 8, 1024, (0, 3, 5), (7, 1, 2)),
        # descending with gaps from the last block into interleaved ones; one layer into the last; 1021 bytes
        LayersCase("int8", 6, 16, 1021, (0, 1), (2, 3), src=(15, 9, 4, 0), dst=(3, 11, 0, 15)),
        LayersCase("bf16", 4, 3, 60, (0, 2), (0, 2), src=(2,), dst=(1,)),  # one block of 120 bytes
        # the last slot into blocks interleaved, first and last; one layer into the last; 1023-byte blocks
        ToBlocksCase("int8", 6, 3, 3069, 16, 1023, 2, (9, 0, 15), (0, 1), (2, 3)),
        # one layer into the last one, 1018-byte slots
        SlotLayersCase("bf16", 8, 3, 2, 509, 0, 1, (0, 1), (3, 4)),
        HostPullCase("fp16", 4, 2, 2048, ((0, 1), (1, 0)), src_host=False),
        MixRoleCase("fp32", 2, 4, 256, (0, 1), (2, 3)),
    ],
    "nightly": [
        ToBlocksCase("fp16", 4, 2, 2048, 8, 512, 0, (6, 0, 3, 5), (0, 2), (0, 2)),
        HostPullCase("int8", 2, 3, 4096, ((2, 0),), src_host=True),
        LayersCase("fp16", 8, 8, 512, (0, 4), (0, 4), src=(0, 1, 5), dst=(7, 2, 3)),
        SlotLayersCase("fp16", 4, 2, 3, 1024, 1, 2, (0, 2), (0, 2)),
        BlocksCase("fp16", 40, 16, 512 * 1024, tuple(range(0, 16, 2)), tuple(range(1, 16, 2)), "1MiB-blocks"),
        LayersCase("fp16", 40, 16, 512 * 1024, (0, 20), (0, 20), src=tuple(range(8)), dst=tuple(range(8, 16)),
                   label="1MiB-blocks"),
        ToBlocksCase("fp16", 16, 2, 1 << 20, 16, 256 * 1024, 1, (15, 3, 7, 11), (0, 8), (0, 8), "512KiB-blocks"),
        SlotLayersCase("bf16", 40, 4, 4, 1 << 20, 3, 0, (0, 20), (0, 20), "2MiB-slots"),
        HostPullCase("bf16", 40, 2, 1 << 20, ((1, 0),), src_host=True, label="2MiB-slots"),
    ],
    "stress": [
        LayersCase("bf16", 160, 64, 64 * 1024, (0, 80), (0, 80), src=tuple(range(64)),
                   dst=tuple(reversed(range(64))), label="GiB"),
        SlotLayersCase("bf16", 160, 4, 4, 1 << 20, 1, 2, (0, 80), (0, 80), "GiB"),
    ],
}

KINDS = {
    "alloc_case": BlocksCase,
    "layers_case": LayersCase,
    "blocks_case": ToBlocksCase,
    "slot_case": SlotLayersCase,
    "host_case": HostPullCase,
    "mix_case": MixRoleCase,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    parametrize_by_type(metafunc, KINDS)


def _refused(api, call, code: str, message: str):
    with pytest.raises(api.LLMException, match=re.escape(message)) as raised:
        call()
    assert raised.value.status_code == getattr(api.LLMStatusCode, code), str(raised.value)
    return raised.value


def _synchronizer(api):
    class AllLayersReady(api.LayerSynchronizer):
        def synchronize_layer(self, layer_index: int, timeout_in_millis) -> bool:
            return True

    return AllLayersReady()


def _run_async(node, cache, configs, nbytes: int, **kwargs) -> None:
    """transfer_cache_async, then synchronize(): every config must report LLM_SUCCESS."""
    api = node.api
    with node.measure("transfer_cache_async", nbytes):
        task = node.cm.transfer_cache_async(cache, _synchronizer(api), configs, **kwargs)
        status = task.synchronize()
    results = task.get_results()
    ok = api.LLMStatusCode.LLM_SUCCESS
    assert status == ok, f"CacheTask.synchronize() returned {status}, results {results}"
    assert results == [ok] * len(configs), f"transfer_cache_async results {results}"


# -- allocate_blocks_cache / deallocate_blocks_cache ------------------------------------------------


@pytest.mark.kv(topology="1p1d")
def test_allocate_blocks_cache(kv, datadist, alloc_case: BlocksCase):
    case = alloc_case
    n, dtype, shape = case.num_tensors, case.torch_dtype, case.shape
    pool = pool_bytes(case.blocks * case.block_bytes, tensors=n)
    not_exist = "[pull_blocks] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
    if kv.role == "p":
        node = datadist(GA_P, mem_pool=pool)
        api = node.api
        comm_id = node.link(["d0"])
        desc = api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE)
        cache = node.allocate_blocks_cache(desc, api.BlocksCacheKey(GA_P, 0))
        source = node.expected_lazily(n, shape, dtype, side="p")
        views = node.pool_views(cache, source)
        kv.barrier("cache ready")
        kv.barrier("pulled")
        node.check(source, views, name="source blocks after pull_blocks")
        del views
        node.deallocate(cache)
        kv.barrier("deallocated")
        kv.barrier("refused pull")  # the key is bound again below: d's pull must come first
        kv.step("allocate_blocks_cache beyond the pool")
        too_big = api.CacheDesc(1, [1, pool + 1], node.datatype(torch.uint8), api.Placement.DEVICE)
        _refused(api, lambda: node.cm.allocate_blocks_cache(too_big), "LLM_OUT_OF_MEMORY",
                 "[allocate_blocks_cache] failed, error code is LLMStatusCode.LLM_OUT_OF_MEMORY")
        again = node.allocate_blocks_cache(desc, api.BlocksCacheKey(GA_P, 0))  # the pool has its memory back
        node.deallocate(again)
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.finalize()
    else:
        node = datadist(GA_D, mem_pool=pool)
        api = node.api
        comm_id = node.link(["p0"])
        desc = api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE)
        cache = node.allocate_blocks_cache(desc)
        views = node.pool_views(cache, node.expected_lazily(n, shape, dtype, side="d"))
        kv.barrier("cache ready")
        key = api.BlocksCacheKey(GA_P, 0)
        with node.measure("pull_blocks", case.moved_bytes):
            node.cm.pull_blocks(key, cache, src_blocks=list(case.src), dst_blocks=list(case.dst))
        expected = node.expected_after_rows(n, shape, dtype, base="d", source="p", src_rows=case.src,
                                            dst_rows=case.dst)
        node.check(expected, views, name="allocated blocks after pull_blocks")
        kv.barrier("pulled")
        kv.barrier("deallocated")
        kv.step("pull_blocks from a deallocated blocks cache")
        _refused(api, lambda: node.cm.pull_blocks(key, cache, src_blocks=list(case.src),
                                                  dst_blocks=list(case.dst)), "LLM_KV_CACHE_NOT_EXIST", not_exist)
        node.check(expected, views, name="allocated blocks after a refused pull_blocks")
        kv.barrier("refused pull")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        del views
        node.deallocate(cache)
        node.finalize()


# -- transfer_cache_async -----------------------------------------------------------------------------


@pytest.mark.kv(topology="1p1d")
def test_transfer_cache_async_block_indices(kv, datadist, layers_case: LayersCase):
    case = layers_case
    n, dtype, shape = case.num_tensors, case.torch_dtype, case.shape
    me, side = (P, "p") if kv.role == "p" else (D, "d")
    node = datadist(me, listen=True, remote_cache_accessible=True)
    api = node.api
    desc = api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE)
    tensors = node.tensors(n, shape, dtype, side=side)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(me, 0))
    kv.barrier("register end")
    if kv.role == "p":
        node.must_link_clusters(["d0"])
        config = api.TransferWithCacheKeyConfig(api.BlocksCacheKey(D, 0), case.src_layer_range, case.dst_layer_range)
        moved = len(case.src) * case.block_bytes * case.tensors_per_layer * len(case.src_layer_range)
        _run_async(node, cache, [config], moved, src_block_indices=list(case.src), dst_block_indices=list(case.dst))
        kv.barrier("transfer end")
        node.check(node.expected_lazily(n, shape, dtype, side="p"), tensors,
                   name="source cache after transfer_cache_async")
        node.unlink_clusters(["d0"], force=True)
    else:
        kv.barrier("transfer end")
        expected = node.expected_after_rows(n, shape, dtype, base="d", source="p", src_rows=case.src,
                                            dst_rows=case.dst, moved=case.tensor_map())
        node.check(expected, tensors, name="cache after transfer_cache_async with block indices")
        node.unlink_clusters(["p0"], force=True)
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_transfer_cache_async_to_blocks(kv, datadist, blocks_case: ToBlocksCase):
    case = blocks_case
    n, dtype = case.num_tensors, case.torch_dtype
    if kv.role == "p":
        node = datadist(P, listen=True, remote_cache_accessible=True)
        api = node.api
        desc = api.CacheDesc(n, case.src_shape, node.datatype(dtype), api.Placement.DEVICE)
        tensors = node.tensors(n, case.src_shape, dtype, side="p")
        cache = node.register_cache(desc, tensors)
        kv.barrier("register end")
        node.must_link_clusters(["d0"])
        if case.slot == 0:
            key = api.BlocksCacheKey(D, 0)
        else:
            kv.step("TransferWithCacheKeyConfig(BlocksCacheKey) from slot > 0")
            _refused(api, lambda: api.TransferWithCacheKeyConfig(api.BlocksCacheKey(D, 0), case.src_layer_range,
                                                                  case.dst_layer_range, src_batch_index=case.slot),
                     "LLM_PARAM_INVALID", "src_batch_index should be 0 when cache_key is BlocksCacheKey.")
            key = api.CacheKeyByIdAndIndex(D, kv.fetch("d0", "cache_id"), 0)
        config = api.TransferWithCacheKeyConfig(
            key, case.src_layer_range, case.dst_layer_range, src_batch_index=case.slot
        )
        _run_async(node, cache, [config], case.moved_bytes, dst_block_indices=list(case.dst),
                   dst_block_memory_size=case.block_bytes)
        kv.barrier("transfer end")
        node.check(node.expected_lazily(n, case.src_shape, dtype, side="p"), tensors,
                   name="source cache after transfer_cache_async")
        node.unlink_clusters(["d0"], force=True)
    else:
        node = datadist(D, listen=True, remote_cache_accessible=True)
        api = node.api
        desc = api.CacheDesc(n, case.dst_shape, node.datatype(dtype), api.Placement.DEVICE)
        tensors = node.tensors(n, case.dst_shape, dtype, side="d")
        cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(D, 0))
        kv.publish("cache_id", cache.cache_id)
        kv.barrier("register end")
        kv.barrier("transfer end")
        expected = node.expected(n, case.dst_shape, dtype, side="d")
        source = node.expected(n, case.src_shape, dtype, side="p")
        for dst_t, src_t in case.tensor_map().items():
            pieces = source[src_t][case.slot].reshape(-1, case.block_row)
            expected[dst_t] = with_rows(expected[dst_t], pieces, src_rows=range(len(case.dst)), dst_rows=case.dst)
        del source
        node.check(expected, tensors, name="blocks after transfer_cache_async from a cache slot")
        node.unlink_clusters(["p0"], force=True)
    node.unregister(cache)
    node.finalize()


def _slot_expected(node, case: SlotLayersCase, base: str | None) -> LazyTensors:
    """d's cache, filled with ``base``'s pattern (``None``: zeros), after the source slot of the source
    layers landed in the destination slot; made one tensor at a time as the check reads it."""
    return node.expected_after_rows(case.num_tensors, case.dst_shape, case.torch_dtype, base=base, source="p",
                                    src_rows=[case.src_slot], dst_rows=[case.dst_slot], moved=case.tensor_map())


@pytest.mark.kv(topology="1p1d")
def test_transfer_cache_async_by_id(kv, datadist, slot_case: SlotLayersCase):
    case = slot_case
    n, dtype = case.num_tensors, case.torch_dtype
    me, side, shape = (P, "p", case.src_shape) if kv.role == "p" else (D, "d", case.dst_shape)
    node = datadist(me, listen=True, remote_cache_accessible=True)
    api = node.api
    tensors = node.tensors(n, shape, dtype, side=side)
    cache = node.register_cache(api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE), tensors)
    kv.publish("cache_id", cache.cache_id)
    kv.barrier("register end")
    if kv.role == "p":
        node.must_link_clusters(["d0"])
        key = api.CacheKeyByIdAndIndex(D, kv.fetch("d0", "cache_id"), case.dst_slot)
        config = api.TransferWithCacheKeyConfig(
            key, case.src_layer_range, case.dst_layer_range, src_batch_index=case.src_slot
        )
        _run_async(node, cache, [config], case.moved_bytes)
        kv.barrier("transfer end")
        node.check(node.expected_lazily(n, shape, dtype, side="p"), tensors,
                   name="source cache after transfer_cache_async")
        node.unlink_clusters(["d0"], force=True)
    else:
        kv.barrier("transfer end")
        expected = _slot_expected(node, case, "d")
        node.check(expected, tensors, name="cache after transfer_cache_async by id and index")
        node.unlink_clusters(["p0"], force=True)
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_transfer_cache_async_raw_addrs(kv, datadist, slot_case: SlotLayersCase):
    """TransferConfig: p sends to the addresses d published, over a two-sided link without remote cache
    access; ``dst_addrs`` holds the two tensors of each source layer, at the destination slot."""
    case = slot_case
    n, dtype = case.num_tensors, case.torch_dtype
    me, side, shape = (GA_P, "p", case.src_shape) if kv.role == "p" else (GA_D, "d", case.dst_shape)
    node = datadist(me)
    api = node.api
    tensors = node.tensors(n, shape, dtype, side=side)
    cache = node.register_cache(api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE), tensors)
    if kv.role == "d":
        by_dst = case.tensor_map()
        stride = case.row_bytes
        kv.publish("dst_addrs", [cache.tensor_addrs[t] + case.dst_slot * stride for t in sorted(by_dst)])
    comm_id = node.link(["d0" if kv.role == "p" else "p0"])
    if kv.role == "p":
        config = api.TransferConfig(GA_D, kv.fetch("d0", "dst_addrs"), case.src_layer_range, case.src_slot)
        _run_async(node, cache, [config], case.moved_bytes)
        kv.barrier("transfer end")
        node.check(node.expected_lazily(n, shape, dtype, side="p"), tensors,
                   name="source cache after transfer_cache_async")
    else:
        kv.barrier("transfer end")
        expected = _slot_expected(node, case, "d")
        node.check(expected, tensors, name="cache after transfer_cache_async to raw addresses")
    kv.barrier("checked")
    node.unlink(comm_id)
    kv.barrier("peer unlink end")
    node.unregister(cache)
    node.finalize()


# -- pull_cache by id, prefix keys, host pools ----------------------------------------------------------


@pytest.mark.kv(topology="1p1d")
def test_pull_cache_by_id(kv, datadist, slot_case: SlotLayersCase):
    """With remote cache access pull_cache takes only CacheKeyByIdAndIndex; pulling by id releases
    nothing, so the same slot comes again."""
    case = slot_case
    n, dtype = case.num_tensors, case.torch_dtype
    me, side, shape = (P, "p", case.src_shape) if kv.role == "p" else (D, "d", case.dst_shape)
    node = datadist(me, listen=kv.role == "p", local_comm_res="")
    api = node.api
    tensors = node.tensors(n, shape, dtype, side=side)
    cache = node.register_cache(api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE), tensors)
    kv.publish("cache_id", cache.cache_id)
    kv.barrier("register end")
    if kv.role == "d":
        node.must_link_clusters(["p0"])
        key = api.CacheKeyByIdAndIndex(P, kv.fetch("p0", "cache_id"), case.src_slot)
        ranges = {"src_layer_range": case.src_layer_range, "dst_layer_range": case.dst_layer_range}
        with node.measure("pull_cache", case.moved_bytes):
            node.cm.pull_cache(key, cache, batch_index=case.dst_slot, **ranges)
        expected = _slot_expected(node, case, "d")
        node.check(expected, tensors, name="cache after pull_cache by id and index")
        for t in tensors:
            t.zero_()  # only a second pull can bring the slot back
        expected = _slot_expected(node, case, None)
        with node.measure("pull_cache", case.moved_bytes):
            node.cm.pull_cache(key, cache, batch_index=case.dst_slot, **ranges)
        node.check(expected, tensors, name="cache after pulling the same id and index again")
        kv.step("pull_cache by a CacheKey while remote cache access is on")
        with pytest.raises(TypeError):
            node.cm.pull_cache(api.CacheKey(P, 0), cache, batch_index=0)
        kv.barrier("pulled")
        node.unlink_clusters(["p0"])  # non-forced: ends both sides
    else:
        kv.barrier("pulled")
        node.check(node.expected_lazily(n, shape, dtype, side="p"), tensors, name="source cache after pull_cache")
        node.forget_links_to(["d0"])
    kv.barrier("unlinked")
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_pull_cache_prefix(kv, datadist):
    """Slot 0 is keyed by a prefix id, slot 1 by a req id: the prefix key can be pulled twice, the req key
    once; after p's remove_cache_key the prefix key is gone too."""
    n, shape, dtype = 4, [2, 2048], torch.float16
    pool = pool_bytes(2 * 2048 * 2, 3 * 2048 * 2, tensors=n)
    prefix, req = 7, 11
    not_exist = "[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
    if kv.role == "p":
        node = datadist(GA_P, mem_pool=pool)
        api = node.api
        comm_id = node.link(["d0"])
        keys = [api.CacheKey(GA_P, UINT64_MAX, 0, prefix), api.CacheKey(GA_P, req)]
        cache = node.allocate_cache(api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE), keys)
        source = node.pool_views(cache, node.expected(n, shape, dtype, side="p"))
        kv.barrier("cache ready")
        kv.barrier("pulled")
        node.cm.remove_cache_key(keys[0])
        kv.barrier("prefix removed")
        kv.barrier("decoder pull end")
        node.check(node.expected(n, shape, dtype, side="p"), source, name="source cache after d's pulls")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.cm.remove_cache_key(keys[1])  # a no-op: d's pull consumed it
        node.deallocate(cache)
        node.finalize()
    else:
        node = datadist(GA_D, mem_pool=pool)
        api = node.api
        comm_id = node.link(["p0"])
        dst_shape = [3, shape[1]]
        cache = node.allocate_cache(api.CacheDesc(n, dst_shape, node.datatype(dtype), api.Placement.DEVICE))
        views = node.pool_views(cache, node.expected(n, dst_shape, dtype, side="d"))
        kv.barrier("cache ready")
        prefix_key, req_key = api.CacheKey(GA_P, UINT64_MAX, 0, prefix), api.CacheKey(GA_P, req)
        slot_bytes = shape[1] * dtype.itemsize * n
        for key, index in ((prefix_key, 0), (prefix_key, 1), (req_key, 2)):
            with node.measure("pull_cache", slot_bytes):
                node.cm.pull_cache(key, cache, batch_index=index)
        source = node.expected(n, shape, dtype, side="p")
        expected = [
            with_rows(b, s, src_rows=[0, 0, 1], dst_rows=[0, 1, 2])
            for b, s in zip(node.expected(n, dst_shape, dtype, side="d"), source)
        ]
        node.check(expected, views, name="cache after pulling a prefix key twice and a req key")
        kv.step("pull_cache of a consumed req key")
        _refused(api, lambda: node.cm.pull_cache(req_key, cache, batch_index=2), "LLM_KV_CACHE_NOT_EXIST", not_exist)
        kv.barrier("pulled")
        kv.barrier("prefix removed")
        kv.step("pull_cache of a removed prefix key")
        _refused(api, lambda: node.cm.pull_cache(prefix_key, cache, batch_index=0), "LLM_KV_CACHE_NOT_EXIST",
                 not_exist)
        node.check(expected, views, name="cache after refused pulls")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.deallocate(cache)
        node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_pull_cache_host(kv, datadist, host_case: HostPullCase):
    """p's cache in one pool, d's in the other (both roles have both pools): d's pulls cross between host
    and device memory; a host -> host pull is refused."""
    case = host_case
    n, dtype, shape = case.num_tensors, case.torch_dtype, case.shape
    api_host = lambda api, host: api.Placement.HOST if host else api.Placement.DEVICE  # noqa: E731
    if kv.role == "p":
        node = datadist(GA_P, mem_pool=case.device_pool, host_mem_pool=case.host_pool)
        api = node.api
        comm_id = node.link(["d0"])
        keys = [api.CacheKey(GA_P, slot) for slot in range(case.batch)]
        desc = api.CacheDesc(n, shape, node.datatype(dtype), api_host(api, case.src_host))
        cache = node.allocate_cache(desc, keys)
        source = node.expected_lazily(n, shape, dtype, side="p")
        views = node.pool_views(cache, source)
        host_keys = [api.CacheKey(GA_P, 100)]
        host_desc = api.CacheDesc(n, [1, case.row], node.datatype(dtype), api.Placement.HOST)
        host_cache = node.allocate_cache(host_desc, host_keys)
        host_source = node.expected(n, [1, case.row], dtype, side="p", first_index=n)
        host_views = node.pool_views(host_cache, host_source)
        kv.barrier("cache ready")
        kv.barrier("decoder pull end")
        node.check(source, views, name="source cache after pull_cache")
        node.check(host_source, host_views, name="host cache after d's refused host -> host pull")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        for key in keys + host_keys:
            node.cm.remove_cache_key(key)
        del views, host_views
        node.deallocate(cache)
        node.deallocate(host_cache)
        node.finalize()
    else:
        node = datadist(GA_D, mem_pool=case.device_pool, host_mem_pool=case.host_pool)
        api = node.api
        comm_id = node.link(["p0"])
        desc = api.CacheDesc(n, shape, node.datatype(dtype), api_host(api, not case.src_host))
        cache = node.allocate_cache(desc)
        views = node.pool_views(cache, node.expected_lazily(n, shape, dtype, side="d"))
        kv.barrier("cache ready")
        for slot, index in case.pulls:
            with node.measure("pull_cache", case.pull_bytes):
                node.cm.pull_cache(api.CacheKey(GA_P, slot), cache, batch_index=index)
        expected = node.expected_after_rows(n, shape, dtype, base="d", source="p",
                                            src_rows=[s for s, _ in case.pulls], dst_rows=[i for _, i in case.pulls])
        where = "host" if case.src_host else "device"
        node.check(expected, views, name=f"cache after pull_cache from the {where} pool of p")
        kv.step("pull_cache host -> host")
        host_desc = api.CacheDesc(n, [1, case.row], node.datatype(dtype), api.Placement.HOST)
        host_cache = node.allocate_cache(host_desc)
        host_before = node.expected(n, [1, case.row], dtype, side="d", first_index=n)
        host_views = node.pool_views(host_cache, host_before)
        _refused(api, lambda: node.cm.pull_cache(api.CacheKey(GA_P, 100), host_cache, batch_index=0),
                 "LLM_FEATURE_NOT_ENABLED", "[pull_cache] failed, error code is LLMStatusCode.LLM_FEATURE_NOT_ENABLED")
        node.check(host_before, host_views, name="host cache after a refused host -> host pull_cache")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        del views, host_views
        node.deallocate(cache)
        node.deallocate(host_cache)
        node.finalize()


# -- sync_kv_timeout, LLMRole.MIX ---------------------------------------------------------------------


@pytest.mark.kv(topology="1p1d")
def test_sync_kv_timeout(kv, datadist, kv_backend):
    """d's sync_kv_timeout is 1 ms and the pull moves far more than 1 ms of data: LLM_TIMEOUT."""
    nbytes = TIMEOUT_BYTES.get(kv_backend.name, TIMEOUT_BYTES["npu"])
    blocks = 16
    shape = [blocks, nbytes // blocks]
    me = P if kv.role == "p" else D
    if kv.role == "p":
        node = datadist(me, listen=True, local_comm_res="")
    else:
        node = datadist(me, local_comm_res="", sync_kv_timeout_ms=1)
    api = node.api
    desc = api.CacheDesc(1, shape, node.datatype(torch.uint8), api.Placement.DEVICE)
    tensors = node.tensors(1, shape, torch.uint8, side=None)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(me, 0))
    kv.barrier("register end")
    if kv.role == "d":
        node.must_link_clusters(["p0"])
        kv.step("pull_blocks past sync_kv_timeout")
        everything = list(range(blocks))
        _refused(api, lambda: node.cm.pull_blocks(api.BlocksCacheKey(P, 0), cache, everything, everything),
                 "LLM_TIMEOUT", "[pull_blocks] failed, error code is LLMStatusCode.LLM_TIMEOUT")
        kv.barrier("timed out")
        node.unlink_clusters(["p0"], force=True)
    else:
        kv.barrier("timed out")
        node.unlink_clusters(["d0"], force=True)
    kv.barrier("unlinked")
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_mix_role(kv, datadist, kv_backend, mix_case: MixRoleCase):
    """Both init as LLMRole.MIX; d pushes its src blocks into p's dst blocks, then pulls p's src blocks
    into its own dst blocks."""
    case = mix_case
    n, dtype, shape = case.num_tensors, case.torch_dtype, case.shape
    me, side = (P, "p") if kv.role == "p" else (D, "d")
    node = datadist(me, listen=True, local_comm_res="", role=kv_backend.api.LLMRole.MIX)
    api = node.api
    desc = api.CacheDesc(n, shape, node.datatype(dtype), api.Placement.DEVICE)
    tensors = node.tensors(n, shape, dtype, side=side)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(me, 0))
    kv.barrier("register end")
    if kv.role == "d":
        node.must_link_clusters(["p0"])
        with node.measure("push_blocks", case.moved_bytes):
            node.cm.push_blocks(api.BlocksCacheKey(P, 0), cache, src_blocks=list(case.src), dst_blocks=list(case.dst))
        with node.measure("pull_blocks", case.moved_bytes):
            node.cm.pull_blocks(api.BlocksCacheKey(P, 0), cache, src_blocks=list(case.src), dst_blocks=list(case.dst))
    kv.barrier("transferred")
    expected = node.expected_after_rows(n, shape, dtype, base=side, source="d" if kv.role == "p" else "p",
                                        src_rows=case.src, dst_rows=case.dst)
    node.check(expected, tensors, name=f"{kv.role} blocks after push_blocks and pull_blocks as LLMRole.MIX")
    node.unlink_clusters(["d0" if kv.role == "p" else "p0"], force=True)
    node.unregister(cache)
    node.finalize()

