"""The worker behind ``transfer_cache_async``: one layer at a time, as the real job does.

Python side (hicann/hixl src/python/llm_datadist/llm_datadist/v2/llm_utils.py ``TransferCacheJob``):
layers no config uses are skipped without asking the synchronizer; a refused layer marks every config
that wanted it LLM_PARAM_INVALID and ends the job; the first failed layer ends the job; a config's
result is LLM_SUCCESS once its last source layer went through. Results are kept per destination
cluster id, so two configs to one cluster share one result. The destination layer of a
``TransferWithCacheKeyConfig`` is ``list(dst_layer_range)[layer]`` with ``layer`` the ABSOLUTE source
layer (known upstream issue ``transfer-layers-absolute-dst-index``): a range not starting at 0 lands
shifted and then raises IndexError, which ends the worker thread with no result recorded.

C++ side, one layer (src/llm_datadist/data_transfer/layer_wise_transfer_job.cc): no destination
blocks is the cache-to-cache path, which copies ONE stride per tensor (one batch slot, or one block of
a blocks cache, whose entry has batch_size 1: src/llm_datadist/cache_mgr/cache_manager.cc
``CreateCacheEntry``); destination blocks without source blocks is cache-to-blocks in
``dst_block_memory_size`` chunks; both is blocks-to-blocks. Failures are returned as codes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Union

from kvtest.backends.sim.async_transfer import (
    LayerSynchronizer,
    TransferConfig,
    TransferWithCacheKeyConfig,
)
from kvtest.backends.sim.cache import BlocksCacheKey
from kvtest.backends.sim.status import LLMException, LLMStatusCode

if TYPE_CHECKING:
    from kvtest.backends.sim.cache_manager import CacheManager, _Entry

API = "transfer_cache_async"
TENSORS_PER_LAYER = 2
#: known upstream issue the sim reproduces unless KVTEST_SIM_FIXED names it
ABSOLUTE_DST_INDEX = "transfer-layers-absolute-dst-index"

AnyConfig = Union[TransferWithCacheKeyConfig, TransferConfig]


def _src_range(config: AnyConfig) -> range:
    """The source layers; ``transfer_cache_async`` filled a TransferConfig's None in before the job."""
    layers = config.src_layer_range
    assert layers is not None
    return layers


class _Refused(Exception):
    """A check of the native layer transfer failed: the layer's result code."""

    def __init__(self, code: LLMStatusCode) -> None:
        super().__init__(code)
        self.code = code


def _require(ok: bool, code: LLMStatusCode = LLMStatusCode.LLM_PARAM_INVALID) -> None:
    if not ok:
        raise _Refused(code)


class LayerJob:
    """One ``transfer_cache_async`` call; :meth:`run` is the worker thread's body."""

    def __init__(
        self,
        cm: CacheManager,
        entry: _Entry,
        synchronizer: LayerSynchronizer,
        configs: Sequence[AnyConfig],
        src_blocks: list[int],
        dst_blocks: list[int],
        block_mem_size: int,
    ) -> None:
        self._cm = cm
        self._entry = entry
        self._synchronizer = synchronizer
        self._configs = list(configs)
        self._src_blocks = src_blocks
        self._dst_blocks = dst_blocks
        self._block_mem_size = block_mem_size
        self._rets: dict[int, LLMStatusCode] = {}
        self._absolute = ABSOLUTE_DST_INDEX not in cm.endpoint.fixed

    def results(self) -> list[LLMStatusCode | None]:
        return [self._rets.get(c.dst_cluster_id) for c in self._configs]

    def run(self) -> None:
        num_layers = self._entry.cache.cache_desc.num_tensors // TENSORS_PER_LAYER
        for layer in range(num_layers):
            wanted = [c for c in self._configs if layer in _src_range(c)]
            if not wanted:
                continue
            if not self._synchronizer.synchronize_layer(layer, None):
                if self._cm.endpoint.faults.spoils_when_refused(API):  # the refused layer goes all the same
                    for config in wanted:
                        self._layer(layer, self._dst_layer(layer, config), config)
                for config in wanted:
                    self._rets[config.dst_cluster_id] = self._reported(LLMStatusCode.LLM_PARAM_INVALID)
                return
            for config in wanted:
                code = self._layer(layer, self._dst_layer(layer, config), config)
                if code != LLMStatusCode.LLM_SUCCESS:
                    self._rets[config.dst_cluster_id] = self._reported(code)
                    return
                if layer == _src_range(config).stop - 1:
                    self._rets[config.dst_cluster_id] = LLMStatusCode.LLM_SUCCESS

    def _reported(self, code: LLMStatusCode) -> LLMStatusCode:
        return self._cm.endpoint.faults.reported(API, code)

    def _dst_layer(self, layer: int, config: AnyConfig) -> int:
        if isinstance(config, TransferConfig):
            return layer
        if self._cm.endpoint.faults.ignores_dst_layers(API):
            return layer - _src_range(config).start
        dst = list(config.dst_layer_range or ())
        if self._absolute:
            return dst[layer]  # IndexError past the range's length ends the thread, as upstream
        return dst[layer - _src_range(config).start]

    def _layer(self, layer: int, dst_layer: int, config: AnyConfig) -> LLMStatusCode:
        try:
            agent, dst_addrs, dst_bytes = self._destination(layer, dst_layer, config)
            spans = self._spans(config)
            src_addrs = self._entry.cache.tensor_addrs[
                layer * TENSORS_PER_LAYER : (layer + 1) * TENSORS_PER_LAYER
            ]
            pairs = [(t, t) for t in range(len(dst_addrs))]
            segments = self._cm.expand(API, pairs, src_addrs, dst_addrs, spans, dst_bytes)
            deadline = time.monotonic() + self._cm.endpoint.sync_timeout_ms / 1000
            self._cm.move(API, "WRITE", agent, segments, deadline)
        except _Refused as refused:
            return refused.code
        except LLMException as exc:
            return exc.status_code
        return LLMStatusCode.LLM_SUCCESS

    def _destination(
        self, layer: int, dst_layer: int, config: AnyConfig
    ) -> tuple[str, list[int], int | None]:
        """The peer's agent, the two destination tensor addresses of this layer and the bytes from
        there to the end of a destination tensor (None when unknown: raw addresses)."""
        agent = self._cm.peer(API, config.dst_cluster_id)
        if isinstance(config, TransferConfig):
            first = (layer - _src_range(config).start) * TENSORS_PER_LAYER
            return agent, list(config.dst_addrs[first : first + TENSORS_PER_LAYER]), None
        _require(self._entry.exported)  # "local cache is not remote accessible."
        key = config.cache_key
        if isinstance(key, BlocksCacheKey):
            remote = self._cm.remote_blocks(API, key)
            dst_batch = 0
        else:
            remote = self._cm.remote_cache(API, agent, key.cluster_id, key.cache_id)
            dst_batch = key.batch_index
        _require(dst_layer < len(remote.addrs) // TENSORS_PER_LAYER)
        if not self._dst_blocks:
            _require(dst_batch < (1 if remote.blocks else remote.batch))
        else:
            _require(max(self._dst_blocks) < (remote.batch if remote.blocks else 0))
            _require(self._block_mem_size in (0, remote.slot_bytes))
        first = dst_layer * TENSORS_PER_LAYER
        offset = dst_batch * remote.slot_bytes
        addrs = [addr + offset for addr in remote.addrs[first : first + TENSORS_PER_LAYER]]
        return agent, addrs, remote.batch * remote.slot_bytes - offset

    def _spans(self, config: AnyConfig) -> list[tuple[int, int, int]]:
        """(source offset, destination offset, bytes) within each tensor of the layer."""
        cache = self._entry.cache
        desc = cache.cache_desc
        stride = desc.slot_bytes
        batch_size = 1 if cache.is_blocks_cache else desc.batch_size
        num_blocks = desc.batch_size if cache.is_blocks_cache else 0
        if not self._dst_blocks:  # cache to cache: one stride
            _require(config.src_batch_index < batch_size)
            return [(config.src_batch_index * stride, 0, stride)]
        bms = self._block_mem_size
        if not self._src_blocks:  # cache to blocks
            _require(0 < bms < desc.size)
            _require(config.src_batch_index < batch_size)
            chunks = -(-desc.size // bms)
            _require(chunks >= len(self._dst_blocks))
            rest = desc.size % bms
            offset = config.src_batch_index * stride
            last = len(self._dst_blocks) - 1
            return [
                (offset + j * bms, d * bms, rest if j == last and rest else bms)
                for j, d in enumerate(self._dst_blocks)
            ]
        _require(num_blocks > 0)  # blocks to blocks
        _require(bms in (0, stride))
        _require(max(self._src_blocks) < num_blocks)
        return [(s * stride, d * stride, stride) for s, d in zip(self._src_blocks, self._dst_blocks)]
