"""The memory pool behind ``allocate_cache`` (``mem_pool_cfg``): one registered CPU buffer, first fit.

The real pool hands out device memory as it is (``LlmMemPool::Alloc`` in hicann/hixl
src/llm_datadist/common/llm_mem_pool.cc writes nothing), so every chunk the sim's hands out holds
:data:`POISON` (repeated), not zeros: a test that reads a pool cache it never filled sees bytes it
cannot mistake for zeros or for its own patterns, nor for what an earlier cache left in the same
chunk. Chunks are poisoned as they are handed out, not the whole pool at init: the samples' pools are
64 MiB for caches of a few KiB, and writing all of it cost about 6 ms a role in every pool test."""

from __future__ import annotations

import torch

from kvtest.host import reused_memory

_ALIGN = 512
#: what pool memory holds before anything writes it
POISON = bytes.fromhex("deadbeef")
_POISON_WORD = int.from_bytes(POISON, "little", signed=True)


class MemoryPool:
    """``memory_size`` bytes of CPU memory handed out in aligned chunks of :data:`POISON` (repeated)."""

    def __init__(self, memory_size: int) -> None:
        self._buffer = reused_memory.empty(memory_size)
        self.base = int(self._buffer.data_ptr())
        self.size = memory_size
        self._free: list[tuple[int, int]] = [(0, memory_size)]
        self._used: dict[int, int] = {}

    def allocate(self, nbytes: int) -> int | None:
        """The address of ``nbytes`` fresh bytes, or None when no free run is large enough."""
        need = max(_ALIGN, -(-nbytes // _ALIGN) * _ALIGN)
        for i, (offset, length) in enumerate(self._free):
            if length >= need:
                if length == need:
                    del self._free[i]
                else:
                    self._free[i] = (offset + need, length - need)
                self._used[offset] = need
                # one 32-bit fill (a byte-wise broadcast copy is about 100x slower); chunks are aligned
                self._buffer[offset:offset + need].view(torch.int32).fill_(_POISON_WORD)
                return self.base + offset
        return None

    def free(self, addr: int) -> None:
        offset = addr - self.base
        length = self._used.pop(offset)
        self._free.append((offset, length))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for start, size in self._free:
            if merged and merged[-1][0] + merged[-1][1] == start:
                merged[-1] = (merged[-1][0], merged[-1][1] + size)
            else:
                merged.append((start, size))
        self._free = merged

    @property
    def bytes_in_use(self) -> int:
        return sum(self._used.values())
