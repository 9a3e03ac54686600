"""An llm_datadist-compatible emulation on CPU memory: bytes move between processes through NIXL.

Use it like ``llm_datadist``; call :func:`configure` first so the process knows the run's store.
"""

from __future__ import annotations

from kvtest.backends.sim.async_transfer import (
    CacheTask,
    LayerSynchronizer,
    TransferConfig,
    TransferWithCacheKeyConfig,
)
from kvtest.backends.sim.cache import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    DataType,
    KvCache,
    MemInfo,
    Memtype,
    Placement,
    RegisterMemStatus,
    create_tensors,
)
from kvtest.backends.sim.cache_manager import CacheManager
from kvtest.backends.sim.cluster import LLMClusterInfo
from kvtest.backends.sim.config import LLMConfig, LlmConfig, LLMRole
from kvtest.backends.sim.context import configure
from kvtest.backends.sim.datadist import LLMDataDist
from kvtest.backends.sim.status import LLMException, LLMStatusCode, Status

__all__ = [
    "BlocksCacheKey",
    "Cache",
    "CacheDesc",
    "CacheKey",
    "CacheKeyByIdAndIndex",
    "CacheManager",
    "CacheTask",
    "DataType",
    "KvCache",
    "LLMClusterInfo",
    "LLMConfig",
    "LLMDataDist",
    "LLMException",
    "LLMRole",
    "LLMStatusCode",
    "LayerSynchronizer",
    "LlmConfig",
    "MemInfo",
    "Memtype",
    "Placement",
    "RegisterMemStatus",
    "Status",
    "TransferConfig",
    "TransferWithCacheKeyConfig",
    "configure",
    "create_tensors",
]
