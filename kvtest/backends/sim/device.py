"""What the sim counts as device memory, so it can refuse host memory registered as DEVICE.

On an NPU, ``register_cache`` of a DEVICE cache hands the addresses to HCCL/HIXL as device memory
(``HcclRegisterGlobalMem`` with ``COMM_MEM_TYPE_DEVICE``: hicann/hixl
src/llm_datadist/cache_mgr/comm_mem_manager.cc ``RegisterCacheMem``), which fails for host memory.
On CPU every address is host memory, so the sim keeps its own list: tensors made by
:func:`to_device` (what ``SimBackend.to_device`` returns, the stand-in for ``tensor.npu()``) and the
DEVICE memory pool. A range leaves the list when its tensor is garbage-collected or its pool is
finalized.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Sequence

import torch

from kvtest.host import reused_memory

_lock = threading.Lock()
_ranges: dict[int, tuple[int, int]] = {}  # token -> (start, nbytes)
_tokens = itertools.count(1)
# Tokens whose memory is gone, dropped from _ranges at the next add or lookup. remove() runs from
# weakref finalizers, which the garbage collector may call inside any allocation, even one made while
# _lock is held by the same thread: so it only appends here and never takes the lock.
_released: list[int] = []


def _drop_released() -> None:
    while _released:
        _ranges.pop(_released.pop(), None)


def add(start: int, nbytes: int) -> int:
    """Count ``[start, start + nbytes)`` as device memory; returns a token for :func:`remove`."""
    with _lock:
        _drop_released()
        token = next(_tokens)
        _ranges[token] = (start, nbytes)
        return token


def remove(token: int) -> None:
    _released.append(token)


def empty(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous tensor (contents unspecified) that the sim treats as device memory while it lives."""
    nbytes = math.prod(shape) * dtype.itemsize
    tensor = reused_memory.empty(nbytes).view(dtype).view(list(shape))
    token = add(tensor.data_ptr(), nbytes)
    weakref.finalize(tensor, remove, token)
    return tensor


def to_device(host: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``host`` that the sim treats as device memory while it lives."""
    host = host.detach()
    tensor = empty(host.shape, host.dtype)
    tensor.copy_(host)
    return tensor


def is_device(start: int, nbytes: int) -> bool:
    """Whether all of ``[start, start + nbytes)`` lies in one device allocation."""
    with _lock:
        _drop_released()
        return any(s <= start and start + nbytes <= s + n for s, n in _ranges.values())
