"""Value types of the cache API: data types, descriptors, caches, keys, and views of raw memory."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from enum import Enum, IntEnum

import torch

from kvtest.backends.sim.checks import (
    INT64_MAX,
    UINT32_MAX,
    UINT64_MAX,
    check_int,
    check_type,
)
from kvtest.backends.sim.status import raise_param_invalid


class DataType(Enum):
    """Values follow GE's usual numbering; the real package reads them from its native wrapper."""

    DT_FLOAT = 0
    DT_FLOAT16 = 1
    DT_INT8 = 2
    DT_INT32 = 3
    DT_UINT8 = 4
    DT_INT16 = 6
    DT_UINT16 = 7
    DT_UINT32 = 8
    DT_INT64 = 9
    DT_UINT64 = 10
    DT_DOUBLE = 11
    DT_BOOL = 12
    DT_STRING = 13
    DT_BF16 = 27


_TORCH_DTYPES: dict[DataType, torch.dtype] = {
    DataType.DT_FLOAT: torch.float32,
    DataType.DT_FLOAT16: torch.float16,
    DataType.DT_BF16: torch.bfloat16,
    DataType.DT_INT8: torch.int8,
    DataType.DT_INT16: torch.int16,
    DataType.DT_UINT16: torch.uint16,
    DataType.DT_UINT8: torch.uint8,
    DataType.DT_INT32: torch.int32,
    DataType.DT_INT64: torch.int64,
    DataType.DT_UINT32: torch.uint32,
    DataType.DT_UINT64: torch.uint64,
    DataType.DT_BOOL: torch.bool,
    DataType.DT_DOUBLE: torch.float64,
}


def torch_dtype(data_type: DataType) -> torch.dtype:
    """The torch dtype with the same element layout; PARAM_INVALID for DT_STRING."""
    if data_type not in _TORCH_DTYPES:
        raise_param_invalid(f"data_type {data_type} is not supported.")
    return _TORCH_DTYPES[data_type]


class Placement(IntEnum):
    HOST = 0
    DEVICE = 1


class RegisterMemStatus(Enum):
    OK = 0
    PREPARING = 1
    FAILED = 2


class Memtype(Enum):
    MEM_TYPE_DEVICE = 0
    MEM_TYPE_HOST = 1


class CacheDesc:
    """``num_tensors`` same-shaped tensors; ``shape[batch_dim_index]`` is the batch (or block) count."""

    def __init__(
        self,
        num_tensors: int,
        shape: Sequence[int],
        data_type: DataType,
        placement: Placement = Placement.DEVICE,
        batch_dim_index: int = 0,
        seq_len_dim_index: int = -1,
        kv_tensor_format: str | None = None,
    ) -> None:
        self.num_tensors = check_int("num_tensors", num_tensors, 0, UINT32_MAX)
        check_type("shape", shape, list, tuple)
        for dim in shape:
            check_int("shape item", dim, 0, INT64_MAX)
        check_type("data_type", data_type, DataType)
        check_type("placement", placement, Placement)
        check_type("batch_dim_index", batch_dim_index, int)
        check_type("seq_len_dim_index", seq_len_dim_index, int)
        if kv_tensor_format is not None:
            check_type("kv_tensor_format", kv_tensor_format, str)
        self.shape = [int(d) for d in shape]
        self.data_type = data_type
        self.placement = placement
        if not 0 <= batch_dim_index < max(len(self.shape), 1):
            raise_param_invalid(f"batch_dim_index {batch_dim_index} is out of shape {self.shape}.")
        if seq_len_dim_index != -1 and not 0 <= seq_len_dim_index < len(self.shape):
            raise_param_invalid(f"seq_len_dim_index {seq_len_dim_index} is out of shape {self.shape}.")
        self.batch_dim_index = batch_dim_index
        self.seq_len_dim_index = seq_len_dim_index
        self.kv_tensor_format = kv_tensor_format
        self._is_blocks = False

    @property
    def size(self) -> int:
        """Bytes of one tensor."""
        return math.prod(self.shape) * torch_dtype(self.data_type).itemsize

    @property
    def batch_size(self) -> int:
        return self.shape[self.batch_dim_index] if self.shape else 1

    @property
    def slot_bytes(self) -> int:
        """Bytes of one batch slot (one block for a blocks cache) of one tensor."""
        return self.size // self.batch_size if self.batch_size else 0

    def update_dim(self, dim_index: int, dim_value: int) -> None:
        check_int("dim_index", dim_index, 0, len(self.shape) - 1)
        self.shape[dim_index] = check_int("dim_value", dim_value, 0, INT64_MAX)

    def __repr__(self) -> str:
        return (
            f"CacheDesc(num_tensors={self.num_tensors}, shape={self.shape}, data_type={self.data_type}, "
            f"placement={self.placement!r})"
        )


class Cache:
    """A cache known to this process; built by the CacheManager, never by users."""

    def __init__(
        self, cache_id: int, cache_desc: CacheDesc, tensor_addrs: list[int], is_blocks: bool
    ) -> None:
        self._cache_id = cache_id
        self._cache_desc = cache_desc
        self._tensor_addrs = list(tensor_addrs)
        self._is_blocks = is_blocks
        self._valid = True

    @property
    def cache_id(self) -> int:
        return self._cache_id

    @property
    def cache_desc(self) -> CacheDesc:
        return self._cache_desc

    @property
    def tensor_addrs(self) -> list[int]:
        return list(self._tensor_addrs)

    @property
    def is_blocks_cache(self) -> bool:
        return self._is_blocks

    def _invalidate(self) -> None:
        self._tensor_addrs = []
        self._valid = False

    @classmethod
    def create_cpu_cache(cls, cache_desc: CacheDesc, addrs: Sequence[int]) -> Cache:
        """Wrap host memory the caller owns as a blocks cache, for ``swap_blocks`` only (cache_id -1)."""
        check_type("cache_desc", cache_desc, CacheDesc)
        check_type("addrs", addrs, list, tuple)
        if cache_desc.placement != Placement.HOST:
            raise_param_invalid("cache_desc.placement should be HOST.")
        if len(addrs) != cache_desc.num_tensors:
            raise_param_invalid("addrs length should be equal to num_tensors.")
        return cls(-1, cache_desc, [check_int("addrs item", a, 1, UINT64_MAX) for a in addrs], True)

    def __repr__(self) -> str:
        return f"Cache(cache_id={self._cache_id}, cache_desc={self._cache_desc}, is_blocks={self._is_blocks})"


def _cluster_arg(cluster_id: int | None, prompt_cluster_id: int | None) -> int:
    value = cluster_id if cluster_id is not None else prompt_cluster_id
    if value is None:
        raise_param_invalid("Param prompt_cluster_id or cluster_id is required")
    return check_int("cluster_id", value, 0, UINT64_MAX)


class CacheKey:
    """A batch slot of a cache allocated on ``cluster_id``; exactly one of req_id / prefix_id is valid."""

    def __init__(
        self,
        prompt_cluster_id: int | None = None,
        req_id: int | None = None,
        model_id: int = 0,
        prefix_id: int = UINT64_MAX,
        *,
        cluster_id: int | None = None,
    ) -> None:
        self._cluster_id = _cluster_arg(cluster_id, prompt_cluster_id)
        if req_id is None:  # v2/llm_types.py CacheKey: req_id has no default
            raise_param_invalid("Param req_id is required")
        self._req_id = check_int("req_id", req_id, 0, UINT64_MAX)
        self._model_id = check_int("model_id", model_id, 0, UINT64_MAX)
        self._prefix_id = check_int("prefix_id", prefix_id, 0, UINT64_MAX)

    cluster_id = property(lambda self: self._cluster_id)
    prompt_cluster_id = property(lambda self: self._cluster_id)
    req_id = property(lambda self: self._req_id)
    model_id = property(lambda self: self._model_id)
    prefix_id = property(lambda self: self._prefix_id)

    def __repr__(self) -> str:
        return (
            f"CacheKey(cluster_id={self._cluster_id}, req_id={self._req_id}, model_id={self._model_id}, "
            f"prefix_id={self._prefix_id})"
        )


class CacheKeyByIdAndIndex:
    """A remote cache addressed by its id and batch index."""

    def __init__(self, cluster_id: int, cache_id: int, batch_index: int = 0) -> None:
        self._cluster_id = check_int("cluster_id", cluster_id, 0, UINT64_MAX)
        self._cache_id = check_int("cache_id", cache_id, -(2**63), INT64_MAX)
        self._batch_index = check_int("batch_index", batch_index, 0, UINT32_MAX)

    cluster_id = property(lambda self: self._cluster_id)
    cache_id = property(lambda self: self._cache_id)
    batch_index = property(lambda self: self._batch_index)

    def __repr__(self) -> str:
        return (
            f"CacheKeyByIdAndIndex(cluster_id={self._cluster_id}, cache_id={self._cache_id}, "
            f"batch_index={self._batch_index})"
        )


class BlocksCacheKey:
    """The blocks cache registered on ``cluster_id`` under ``model_id`` (one per cluster and model)."""

    def __init__(
        self, prompt_cluster_id: int | None = None, model_id: int = 0, *, cluster_id: int | None = None
    ) -> None:
        self._cluster_id = _cluster_arg(cluster_id, prompt_cluster_id)
        self._model_id = check_int("model_id", model_id, 0, UINT64_MAX)

    cluster_id = property(lambda self: self._cluster_id)
    prompt_cluster_id = property(lambda self: self._cluster_id)
    model_id = property(lambda self: self._model_id)

    def __repr__(self) -> str:
        return f"BlocksCacheKey(cluster_id={self._cluster_id}, model_id={self._model_id})"


def create_tensors(shape: Sequence[int], dtype: torch.dtype, addrs: Sequence[int]) -> list[torch.Tensor]:
    """Tensors viewing the memory at ``addrs`` (no copy): the sim counterpart of torchair's
    ``create_npu_tensors``. The caller keeps the memory alive for as long as the views are used."""
    check_type("shape", shape, list, tuple)
    check_type("dtype", dtype, torch.dtype)
    check_type("addrs", addrs, list, tuple)
    dims = [check_int("shape item", d, 0, INT64_MAX) for d in shape]
    nbytes = math.prod(dims) * dtype.itemsize
    views = []
    for addr in addrs:
        check_int("addrs item", addr, 1, UINT64_MAX)
        if nbytes == 0:
            views.append(torch.empty(dims, dtype=dtype))
            continue
        buf = (ctypes.c_uint8 * nbytes).from_address(addr)
        views.append(torch.frombuffer(buf, dtype=torch.uint8).view(dtype).view(dims))
    return views
