"""``llm_datadist`` for programs run by ``kvtest run`` on sim: kvtest's sim, which takes its control
plane from ``KVTEST_SIM_STORE``. Modules, names and ``v2_list`` as hicann/hixl
src/python/llm_datadist/llm_datadist/ exports them. The v1 names (``TensorDesc``, ``Tensor``,
``KvCacheManager``) are loaded lazily from ``llm_datadist_v1`` there, a package the real one does not
ship either: asking for them raises the same ImportError."""

import importlib
import os
from typing import Any

from llm_datadist.configs import LLMClusterInfo, LlmConfig, LLMRole
from llm_datadist.configs import LlmConfig as LLMConfig
from llm_datadist.data_type import DataType
from llm_datadist.status import LLMException, LLMStatusCode, Status
from llm_datadist.v2.cache_manager import CacheManager  # noqa: F401 - names its class's module
from llm_datadist.v2.llm_datadist import LLMDataDist
from llm_datadist.v2.llm_types import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    CacheTask,
    KvCache,
    LayerSynchronizer,
    MemInfo,
    Memtype,
    Placement,
    RegisterMemStatus,
    TransferConfig,
    TransferWithCacheKeyConfig,
)

__all__ = [
    "LLMClusterInfo",
    "LLMStatusCode",
    "LLMException",
    "LLMRole",
    "LlmConfig",
    "LLMConfig",
    "DataType",
    "Status",
    "CacheDesc",
    "CacheKey",
    "CacheKeyByIdAndIndex",
    "KvCache",
    "Cache",
    "BlocksCacheKey",
    "LLMDataDist",
    "Placement",
    "RegisterMemStatus",
    "LayerSynchronizer",
    "TransferConfig",
    "CacheTask",
    "TransferWithCacheKeyConfig",
    "Memtype",
    "MemInfo",
    "TensorDesc",
    "Tensor",
    "KvCacheManager",
]

#: the v2 names, as the real package lists them
v2_list = __all__[:-3]

_V1_NAMES = ("TensorDesc", "Tensor", "KvCacheManager")


def __getattr__(name: str) -> Any:
    if name not in _V1_NAMES:
        raise AttributeError(f"Module 'llm_datadist' has no attribute '{name}'")
    return getattr(importlib.import_module("llm_datadist_v1"), name)


os.environ.setdefault("AUTO_USE_UC_MEMORY", "0")
