"""Value types of the cache API: data types, descriptors, caches, keys, and views of raw memory."""

from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from enum import Enum, IntEnum

import torch

from kvtest.backends.sim.checks import (
    INT64_MAX,
    UINT64_MAX,
    check_int,
    check_int32,
    check_int64,
    check_isinstance,
    check_list_int64,
    check_type,
    check_uint32,
    check_uint64,
)
from kvtest.backends.sim.status import LLMException, raise_if_false, raise_param_invalid


class DataType(Enum):
    """Members in the real order (hicann/hixl llm_datadist/data_type.py); values are GE's ``ge::DataType``
    numbers, which the real package reads from its native wrapper."""

    DT_FLOAT = 0
    DT_FLOAT16 = 1
    DT_BF16 = 27
    DT_INT8 = 2
    DT_INT16 = 6
    DT_UINT16 = 7
    DT_UINT8 = 4
    DT_INT32 = 3
    DT_INT64 = 9
    DT_UINT32 = 8
    DT_UINT64 = 10
    DT_BOOL = 12
    DT_DOUBLE = 11
    DT_STRING = 13


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

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class RegisterMemStatus(Enum):
    OK = 0
    PREPARING = 1
    FAILED = 2


class Memtype(Enum):
    MEM_TYPE_DEVICE = 0
    MEM_TYPE_HOST = 1


class MemInfo:
    """A region of registered memory, for ``CacheManager.remap_registered_memory``."""

    def __init__(self, mem_type: Memtype, addr: int, size: int) -> None:
        check_isinstance("mem_type", mem_type, Memtype)
        check_isinstance("addr", addr, int)
        check_isinstance("size", size, int)
        self._mem_type = mem_type
        self._addr = addr
        self._size = size

    mem_type = property(lambda self: self._mem_type)
    addr = property(lambda self: self._addr)
    size = property(lambda self: self._size)

    def __str__(self) -> str:
        return f"MemInfo(mem_type={self.mem_type}, addr={self.addr}, size={self.size})"

    __repr__ = __str__


#: GE sizes a DT_STRING element as a 16-byte string head (measured: calc_tensor_size([2], DT_STRING) == 32)
STRING_ELEMENT_BYTES = 16


def tensor_size(shape: Sequence[int], data_type: DataType) -> int:
    """Bytes of one tensor of ``shape``; -1 when a dimension is negative (unknown), as GE computes it."""
    if any(dim < 0 for dim in shape):
        return -1
    if data_type == DataType.DT_STRING:
        return math.prod(shape) * STRING_ELEMENT_BYTES
    return math.prod(shape) * torch_dtype(data_type).itemsize


class CacheDesc:
    """``num_tensors`` same-shaped tensors; ``shape[batch_dim_index]`` is the batch (or block) count.
    Checks, read-only fields and ``repr`` as hicann/hixl v2/llm_types.py ``CacheDesc``."""

    def __init__(
        self,
        num_tensors: int,
        shape: tuple[int, ...] | list[int],
        data_type: DataType,
        placement: Placement = Placement.DEVICE,
        batch_dim_index: int = 0,
        seq_len_dim_index: int = -1,
        kv_tensor_format: str | None = None,
    ) -> None:
        self._num_tensors = num_tensors
        self._shape = shape
        check_uint32("num_tensors", num_tensors)
        check_isinstance("shape", shape, [tuple, list], int)
        check_isinstance("data_type", data_type, DataType)
        check_isinstance("placement", placement, Placement)
        check_isinstance("batch_dim_index", batch_dim_index, int)
        check_int32("seq_len_dim_index", seq_len_dim_index)
        check_isinstance("kv_tensor_format", kv_tensor_format, str)
        raise_if_false(
            0 <= batch_dim_index < len(shape),
            f"batch_dim_index {batch_dim_index} out of range, [0, {len(shape)})",
        )
        raise_if_false(
            seq_len_dim_index == -1 or 0 <= seq_len_dim_index < len(shape),
            f"seq_len_dim_index {seq_len_dim_index} is invalid, should be -1 or in range [0, {len(shape)})",
        )
        check_list_int64("shape", shape)
        self._data_type = data_type
        self._batch_dim = batch_dim_index
        self._batch_size = shape[batch_dim_index]
        self._seq_len_dim_index = seq_len_dim_index
        self._size = -1
        self._kv_tensor_format = kv_tensor_format
        self._placement = placement
        self._is_blocks = False

    num_tensors = property(lambda self: self._num_tensors)
    shape = property(lambda self: self._shape)
    data_type = property(lambda self: self._data_type)
    batch_dim = property(lambda self: self._batch_dim)
    batch_size = property(lambda self: self._batch_size)
    seq_len_dim_index = property(lambda self: self._seq_len_dim_index)
    kv_tensor_format = property(lambda self: self._kv_tensor_format)
    placement = property(lambda self: self._placement)

    @property
    def size(self) -> int:
        """Bytes of one tensor."""
        if self._size == -1:
            self._size = tensor_size(self._shape, self._data_type)
            if self._size < 0:
                raise LLMException(
                    f"Failed to calc tensor size, shape = {self.shape}, data_type = {self.data_type}"
                )
        return int(self._size)

    @property
    def slot_bytes(self) -> int:
        """Bytes of one batch slot (one block for a blocks cache) of one tensor."""
        return self.size // self.batch_size if self.batch_size else 0

    def update_dim(self, dim_index: int, dim_value: int) -> None:
        self._shape[dim_index] = dim_value  # type: ignore[index]  # a tuple shape fails, as upstream
        self._size = -1

    def __repr__(self) -> str:
        return (
            f"CacheDesc(num_tensors={self.num_tensors}, shape={self.shape}, data_type={self.data_type}, "
            f"placement={self.placement}, batch_dim_index={self.batch_dim}, "
            f"seq_len_dim_index={self.seq_len_dim_index},kv_tensor_format={self.kv_tensor_format})"
        )


class Cache:
    """A cache known to this process; built by the CacheManager (or ``create_cpu_cache``), never by users."""

    def __init__(
        self,
        cache_id: int,
        cache_desc: CacheDesc,
        tensor_addrs: list[int],
        cache_manager: object,
        is_registered: bool,
        is_blocks_cache: bool,
    ) -> None:
        self._cache_id = cache_id
        check_int64("cache_id", cache_id)
        self._cache_desc = cache_desc
        self._tensor_addrs = tensor_addrs
        self._valid = True
        self._cache_manager = cache_manager
        self._is_registered = is_registered
        self._is_blocks_cache = is_blocks_cache

    @property
    def cache_id(self) -> int:
        return int(self._cache_id)

    @property
    def cache_desc(self) -> CacheDesc:
        return self._cache_desc

    @property
    def tensor_addrs(self) -> list[int]:
        return self._tensor_addrs

    @property
    def is_blocks_cache(self) -> bool:
        return self._is_blocks_cache

    def invalidate(self) -> None:
        self._tensor_addrs = []
        self._valid = False

    @classmethod
    def create_cpu_cache(cls, cache_desc: CacheDesc, addrs: list[int]) -> Cache:
        """Wrap host memory the caller owns as a blocks cache, for ``swap_blocks`` only (cache_id -1)."""
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("addrs", addrs, list, int)
        raise_if_false(cache_desc.placement == Placement.HOST, "cache_desc placement must be HOST")
        raise_if_false(
            cache_desc.num_tensors == len(addrs),
            f"cache_desc num_tensors:{cache_desc.num_tensors} not equal addrs num:{len(addrs)}",
        )
        return cls(-1, cache_desc, addrs, None, False, True)

    def __str__(self) -> str:
        return (
            f"Cache(cache_id = {self._cache_id}, device_tensor_addrs = {len(self._tensor_addrs)}, "
            f"is_blocks_cache = {self._is_blocks_cache})"
        )

    __repr__ = __str__


def _key_kwargs(
    args: tuple[object, ...], kwargs: dict[str, object], names: tuple[str, ...]
) -> dict[str, object]:
    """Positional arguments named as the real keys name them (the first is ``cluster_id``)."""
    raise_if_false(len(args) + len(kwargs) <= len(names), "Param num is over limit")
    for name, value in zip(names, args):
        kwargs[name] = value
    raise_if_false(
        "prompt_cluster_id" in kwargs or "cluster_id" in kwargs,
        "Param prompt_cluster_id or cluster_id is required",
    )
    return kwargs


class CacheKey:
    """A batch slot of a cache allocated on ``cluster_id``; exactly one of req_id / prefix_id is valid.
    Arguments as hicann/hixl v2/llm_types.py ``CacheKey(*args, **kwargs)``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs = _key_kwargs(args, kwargs, ("cluster_id", "req_id", "model_id", "prefix_id"))
        raise_if_false("req_id" in kwargs, "Param req_id is required")
        valid = ("prompt_cluster_id", "cluster_id", "req_id", "model_id", "prefix_id")
        for k in kwargs:
            raise_if_false(k in valid, f"Unsupported param:{k}")
        self._cluster_id = kwargs["cluster_id"] if "cluster_id" in kwargs else kwargs["prompt_cluster_id"]
        self._req_id = kwargs["req_id"]
        self._model_id = kwargs.get("model_id", 0)
        self._prefix_id = kwargs.get("prefix_id", UINT64_MAX)
        check_uint64("cluster_id", self._cluster_id)
        check_uint64("req_id", self._req_id)
        check_uint64("model_id", self._model_id)
        check_uint64("prefix_id", self._prefix_id)

    cluster_id = property(lambda self: self._cluster_id)
    prompt_cluster_id = property(lambda self: self._cluster_id)
    req_id = property(lambda self: self._req_id)
    model_id = property(lambda self: self._model_id)
    prefix_id = property(lambda self: self._prefix_id)

    def __repr__(self) -> str:
        return (
            f"CacheKey(cluster_id={self._cluster_id}, req_id={self._req_id}, prefix_id={self._prefix_id}, "
            f"model_id={self._model_id})"
        )


class CacheKeyByIdAndIndex:
    """A remote cache addressed by its id and batch index."""

    def __init__(self, cluster_id: int, cache_id: int, batch_index: int = 0) -> None:
        check_uint64("cluster_id", cluster_id)
        check_int64("cache_id", cache_id)
        check_uint32("batch_index", batch_index)
        self._cluster_id = cluster_id
        self._cache_id = cache_id
        self._batch_index = batch_index
        self._req_id = UINT64_MAX

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

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs = _key_kwargs(args, kwargs, ("cluster_id", "model_id"))
        for k in kwargs:
            raise_if_false(k in ("prompt_cluster_id", "cluster_id", "model_id"), f"Unsupported param:{k}")
        self._cluster_id_key = "cluster_id" if "cluster_id" in kwargs else "prompt_cluster_id"
        self._cluster_id = kwargs[self._cluster_id_key]
        self._model_id = kwargs.get("model_id", 0)
        check_isinstance("cluster_id", self._cluster_id, int, extra_fmt="The first param ")
        check_isinstance("model_id", self._model_id, int, extra_fmt="The second param ")

    cluster_id = property(lambda self: self._cluster_id)
    prompt_cluster_id = property(lambda self: self._cluster_id)
    model_id = property(lambda self: self._model_id)

    def __repr__(self) -> str:
        return f"BlocksCacheKey({self._cluster_id_key}={self._cluster_id}, model_id={self._model_id})"


class KvCache:
    """The v1 cache type (``KvCacheManager``'s). The sim has no v1 engine, so only ``create_cpu_cache``
    and the accessors are of use."""

    def __init__(
        self,
        cache_id: int,
        cache_desc: CacheDesc,
        per_device_tensor_addrs: list[list[int]],
        kv_cache_manager: object,
    ) -> None:
        self._cache_id = cache_id
        check_int64("cache_id", cache_id)
        self._cache_desc = cache_desc
        self._per_device_tensor_addrs = per_device_tensor_addrs
        self._valid = True
        self._kv_cache_manager = kv_cache_manager

    cache_id = property(lambda self: self._cache_id)
    cache_desc = property(lambda self: self._cache_desc)
    per_device_tensor_addrs = property(lambda self: self._per_device_tensor_addrs)

    def __str__(self) -> str:
        return f"KvCache(cache_id = {self._cache_id}, num_devices = {len(self._per_device_tensor_addrs)})"

    __repr__ = __str__

    @classmethod
    def create_cpu_cache(cls, cache_desc: CacheDesc, addrs: list[int] | list[list[int]]) -> KvCache:
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        raise_if_false(cache_desc.placement == Placement.HOST, "cache_desc placement must be HOST")
        check_isinstance("addrs", addrs, list)
        raise_if_false(len(addrs) > 0, "addrs length should be bigger than zero.")
        last_type: type = type(addrs[0])
        for addr in addrs:
            check_isinstance("the internal element of addrs", addr, [list, int])
            if isinstance(addr, list):
                check_isinstance("the internal element of addrs", addr, list, int)
                raise_if_false(
                    cache_desc.num_tensors == len(addr),
                    f"cache_desc num_tensors:{cache_desc.num_tensors} "
                    f"should be equal to size of the internal element of addrs:{len(addr)}",
                )
            raise_if_false(
                isinstance(addr, last_type), "the type of the internal element of addrs should be consistent."
            )
            last_type = type(addr)
        if last_type is int:
            raise_if_false(
                cache_desc.num_tensors == len(addrs),
                f"cache_desc num_tensors:{cache_desc.num_tensors} "
                f"should be equal to size of addrs:{len(addrs)}",
            )
        nested = [addrs] if last_type is int else addrs
        return cls(-1, cache_desc, nested, None)  # type: ignore[arg-type]


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
