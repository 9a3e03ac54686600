"""Types of ``transfer_cache_async``: the layer synchronizer, the two config kinds, and the task."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from kvtest.backends.sim.cache import BlocksCacheKey, CacheKeyByIdAndIndex
from kvtest.backends.sim.checks import (
    UINT32_MAX,
    check_int,
    check_isinstance,
    check_list_uint64,
    check_uint32,
    check_uint64,
)
from kvtest.backends.sim.status import LLMStatusCode, raise_if_false, raise_if_true


class LayerSynchronizer(ABC):
    """Says when layer *i* is computed and may be sent."""

    @abstractmethod
    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        """Return True once layer ``layer_index`` may be sent."""


def check_layer_range(name: str, layer_range: range | None, allow_none: bool = True) -> range | None:
    """``check_layer_range`` of hicann/hixl v2/llm_types.py: a range with step 1 and 0 <= start < stop."""
    if allow_none and layer_range is None:
        return None
    check_isinstance(name, layer_range, range, allow_none=allow_none)
    assert layer_range is not None
    raise_if_false(layer_range.step == 1, f"check {name}.step == 1 failed")
    raise_if_false(
        0 <= layer_range.start < layer_range.stop,
        f"check 0 <= range.start < range.stop failed, {name} = {layer_range}",
    )
    return layer_range


class TransferWithCacheKeyConfig:
    """Send ``src_layer_range`` of the source into ``dst_layer_range`` of the cache ``cache_key`` names."""

    def __init__(
        self,
        cache_key: BlocksCacheKey | CacheKeyByIdAndIndex,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        src_batch_index: int = 0,
    ) -> None:
        check_isinstance("cache_key", cache_key, [BlocksCacheKey, CacheKeyByIdAndIndex], allow_none=False)
        self._cache_key = cache_key
        check_layer_range("src_layer_range", src_layer_range, allow_none=False)
        self._src_layer_range = src_layer_range
        check_layer_range("dst_layer_range", dst_layer_range, allow_none=False)
        self._dst_layer_range = dst_layer_range
        assert src_layer_range is not None and dst_layer_range is not None
        raise_if_false(
            len(src_layer_range) == len(dst_layer_range),
            "src_layer_range size should be equal to dst_layer_range size",
        )
        check_uint32("src_batch_index", src_batch_index)
        raise_if_true(
            isinstance(cache_key, BlocksCacheKey) and src_batch_index != 0,
            "src_batch_index should be 0 when cache_key is BlocksCacheKey.",
        )
        self._src_batch_index = src_batch_index
        self.dst_cluster_id = cache_key.cluster_id

    def __repr__(self) -> str:
        return (
            f"TransferWithCacheKeyConfig(cache_key={self._cache_key}, "
            f"src_layer_range={self._src_layer_range}, "
            f"dst_layer_range={self._dst_layer_range}, src_batch_index={self._src_batch_index})"
        )

    @property
    def cache_key(self) -> BlocksCacheKey | CacheKeyByIdAndIndex:
        return self._cache_key

    @cache_key.setter
    def cache_key(self, cache_key: BlocksCacheKey | CacheKeyByIdAndIndex) -> None:
        check_isinstance("cache_key", cache_key, [BlocksCacheKey, CacheKeyByIdAndIndex])
        self._cache_key = cache_key

    @property
    def src_layer_range(self) -> range | None:
        return self._src_layer_range

    @src_layer_range.setter
    def src_layer_range(self, value: range | None) -> None:
        check_layer_range("src_layer_range", value)
        self._src_layer_range = value

    @property
    def dst_layer_range(self) -> range | None:
        return self._dst_layer_range

    @dst_layer_range.setter
    def dst_layer_range(self, value: range | None) -> None:
        check_layer_range("dst_layer_range", value)
        self._dst_layer_range = value

    @property
    def src_batch_index(self) -> int:
        return self._src_batch_index

    @src_batch_index.setter
    def src_batch_index(self, value: int) -> None:
        raise_if_true(
            isinstance(self.cache_key, BlocksCacheKey) and value != 0,
            "src_batch_index should be 0 when cache_key is BlocksCacheKey.",
        )
        check_uint32("src_batch_index", value)
        self._src_batch_index = value


class TransferConfig:
    """Send to raw destination addresses on ``dst_cluster_id`` (the non-remote-accessible variant)."""

    def __init__(
        self,
        dst_cluster_id: int,
        dst_addrs: list[int] | tuple[int, ...],
        src_layer_range: range | None = None,
        src_batch_index: int = 0,
    ) -> None:
        check_uint64("dst_cluster_id", dst_cluster_id)
        self._check_dst_addrs(dst_addrs)
        check_layer_range("src_layer_range", src_layer_range)
        check_uint32("src_batch_index", src_batch_index)
        self._dst_cluster_id = dst_cluster_id
        self._dst_addrs = dst_addrs
        self._src_layer_range = src_layer_range
        self._src_batch_index = src_batch_index
        # as upstream (v2/llm_types.py): destination layer = source layer
        self.dst_layer_range: range | None = None

    @staticmethod
    def _check_dst_addrs(dst_addrs: object) -> None:
        check_isinstance("dst_addrs", dst_addrs, [list, tuple], int, allow_none=False)
        assert isinstance(dst_addrs, (list, tuple))
        check_list_uint64("dst_addrs", dst_addrs)

    def __repr__(self) -> str:
        return (
            f"TransferConfig(dst_cluster_id={self._dst_cluster_id}, dst_addrs={self._dst_addrs}, "
            f"src_layer_range={self._src_layer_range}, src_batch_index={self._src_batch_index})"
        )

    __str__ = __repr__

    @property
    def dst_cluster_id(self) -> int:
        return self._dst_cluster_id

    @dst_cluster_id.setter
    def dst_cluster_id(self, value: int) -> None:
        check_uint64("dst_cluster_id", value)
        self._dst_cluster_id = value

    @property
    def dst_addrs(self) -> list[int] | tuple[int, ...]:
        return self._dst_addrs

    @dst_addrs.setter
    def dst_addrs(self, value: list[int] | tuple[int, ...]) -> None:
        self._check_dst_addrs(value)
        self._dst_addrs = value

    @property
    def src_layer_range(self) -> range | None:
        return self._src_layer_range

    @src_layer_range.setter
    def src_layer_range(self, value: range | None) -> None:
        check_layer_range("src_layer_range", value)
        self._src_layer_range = value

    @property
    def src_batch_index(self) -> int:
        return self._src_batch_index

    @src_batch_index.setter
    def src_batch_index(self, value: int) -> None:
        check_uint32("src_batch_index", value)
        self._src_batch_index = value


class CacheTask:
    """The handle of an asynchronous transfer; ``results()`` gives one code (or None) per config.

    As hicann/hixl v2/llm_utils.py ``TransferAsyncThread``: a wait that runs out gives LLM_TIMEOUT;
    ``synchronize`` returns the first result that is neither None nor LLM_SUCCESS, so configs that
    never finished (the worker died) count as success.
    """

    def __init__(self, thread: threading.Thread, results: Callable[[], list[LLMStatusCode | None]]) -> None:
        self._thread = thread
        self._results = results

    def _wait(self, timeout_in_millis: int | None) -> bool:
        if timeout_in_millis is not None:
            check_int("timeout_in_millis", timeout_in_millis, 0, UINT32_MAX)
            self._thread.join(timeout_in_millis / 1000)
        else:
            # the worker's transfers are each bounded by sync_kv_timeout, so this join ends
            while self._thread.is_alive():
                self._thread.join(0.1)
                time.sleep(0)
        return not self._thread.is_alive()

    def synchronize(self, timeout_in_millis: int | None = None) -> LLMStatusCode:
        """The first non-success result, else LLM_SUCCESS; LLM_TIMEOUT when the wait ran out first."""
        if not self._wait(timeout_in_millis):
            return LLMStatusCode.LLM_TIMEOUT
        for result in self._results():
            if result is not None and result != LLMStatusCode.LLM_SUCCESS:
                return result
        return LLMStatusCode.LLM_SUCCESS

    def get_results(self, timeout_in_millis: int | None = None) -> list[LLMStatusCode | None]:
        """One code per transfer config (None if it never finished); all LLM_TIMEOUT when the wait ran out."""
        results = self._results()
        if not self._wait(timeout_in_millis):
            return [LLMStatusCode.LLM_TIMEOUT] * len(results)
        return self._results()
