"""Types of ``transfer_cache_async``: the layer synchronizer, the two config kinds, and the task."""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

from kvtest.backends.sim.cache import BlocksCacheKey, CacheKeyByIdAndIndex
from kvtest.backends.sim.checks import UINT32_MAX, UINT64_MAX, check_int, check_type
from kvtest.backends.sim.status import LLMStatusCode, raise_param_invalid


class LayerSynchronizer(ABC):
    """Says when layer *i* is computed and may be sent."""

    @abstractmethod
    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        """Return True once layer ``layer_index`` may be sent."""


def check_layer_range(arg: str, value: range | None) -> range | None:
    if value is None:
        return None
    check_type(arg, value, range)
    if value.step != 1 or value.start < 0 or value.start >= value.stop:
        raise ValueError(
            f"{arg}'s value is out of range, range with step 1 and 0 <= start < stop, but got {value}"
        )
    return value


class TransferWithCacheKeyConfig:
    """Send ``src_layer_range`` of the source into ``dst_layer_range`` of the cache ``cache_key`` names."""

    def __init__(
        self,
        cache_key: BlocksCacheKey | CacheKeyByIdAndIndex,
        src_layer_range: range,
        dst_layer_range: range,
        src_batch_index: int = 0,
    ) -> None:
        check_type("cache_key", cache_key, BlocksCacheKey, CacheKeyByIdAndIndex)
        src = check_layer_range("src_layer_range", src_layer_range)
        dst = check_layer_range("dst_layer_range", dst_layer_range)
        if src is None or dst is None:
            raise_param_invalid("src_layer_range and dst_layer_range are required.")
        if len(src) != len(dst):
            raise_param_invalid("src_layer_range and dst_layer_range should have the same length.")
        self.src_batch_index = check_int("src_batch_index", src_batch_index, 0, UINT32_MAX)
        if isinstance(cache_key, BlocksCacheKey) and self.src_batch_index != 0:
            raise_param_invalid("src_batch_index should be 0 when cache_key is BlocksCacheKey.")
        self.cache_key = cache_key
        self.src_layer_range = src
        self.dst_layer_range = dst

    @property
    def dst_cluster_id(self) -> int:
        return int(self.cache_key.cluster_id)


class TransferConfig:
    """Send to raw destination addresses on ``dst_cluster_id`` (the non-remote-accessible variant)."""

    def __init__(
        self,
        dst_cluster_id: int,
        dst_addrs: Sequence[int],
        src_layer_range: range | None = None,
        src_batch_index: int = 0,
    ) -> None:
        self.dst_cluster_id = check_int("dst_cluster_id", dst_cluster_id, 0, UINT64_MAX)
        check_type("dst_addrs", dst_addrs, list, tuple)
        self.dst_addrs = [check_int("dst_addrs item", a, 1, UINT64_MAX) for a in dst_addrs]
        self.src_layer_range = check_layer_range("src_layer_range", src_layer_range)
        self.src_batch_index = check_int("src_batch_index", src_batch_index, 0, UINT32_MAX)
        # as upstream (v2/llm_types.py): destination layer = source layer
        self.dst_layer_range: range | None = None


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
