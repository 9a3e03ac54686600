"""Host memory for kvtest's large buffers, reused from test to test instead of freshly touched each time.

A test's patterns, expected states, the sim's device memory and its memory pools are large, short-lived
buffers. Fresh ones come from the kernel as untouched pages: each first write faults and zeroes a page,
which measured about 6x the cost of writing the same bytes into memory touched before (640 MiB of
patterns: 0.35 s fresh, 0.05 s reused, here). :func:`empty` hands out such buffers from blocks kept
after an earlier buffer died, as a device's caching allocator does.

What it promises:

- A buffer's block returns to the cache only when nothing references its memory any more: the buffer
  is a tensor over a ctypes view of the block (``torch.frombuffer``), and the block comes back when that
  view is collected, which happens after the last tensor or view sharing its storage is gone.
- Contents are unspecified (the bytes of an earlier test, like device memory), as ``torch.empty``'s.
- The cache never makes this process hold more than the most its buffers ever held in use at once:
  before a fresh block is made, idle blocks are dropped until the idle bytes, the bytes in use and the
  new block fit under that high-water mark (the first buffers of a run raise the mark, as they would
  without the cache). Nothing is retained beyond a role's own peak.
- Idle blocks never exceed :data:`IDLE_LIMIT` bytes (an eighth of the host's memory): several roles
  share a host, and each keeping its own peak idle put the nightly profile's four roles under memory
  pressure here (24 GiB; single tests then ran 2-6x slower).

Buffers under :data:`MIN_BYTES` are plain ``torch.empty``: the C allocator reuses small ones already.
"""

from __future__ import annotations

import ctypes
import os
import threading
import weakref

import torch

__all__ = ["IDLE_LIMIT", "MIN_BYTES", "CacheStats", "block_size", "clear", "empty", "stats"]

#: smaller buffers are not cached
MIN_BYTES = 1 << 20


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: the most idle bytes one process keeps
IDLE_LIMIT = _host_memory() // 8

_lock = threading.Lock()
_idle: dict[int, list[torch.Tensor]] = {}  # block size -> idle blocks (uint8 tensors owning memory)
_returned: list[torch.Tensor] = []  # blocks whose buffers died, not yet filed (see _release)
_idle_bytes = 0
_in_use_bytes = 0
_high_water = 0
_reused = 0
_made = 0


def block_size(nbytes: int) -> int:
    """The block size a buffer of ``nbytes`` gets: the next quarter step of a power of two (at most 25%
    more; pages a buffer never reaches are never touched, so they cost address space, not memory)."""
    top = 1 << (max(nbytes, 1) - 1).bit_length()  # the power of two at or above nbytes
    step = max(top // 8, 1)
    return -(-nbytes // step) * step


class CacheStats:
    """How the cache has done in this process (for benchmarks and tests)."""

    def __init__(self, reused: int, made: int, idle_bytes: int, in_use_bytes: int, high_water: int) -> None:
        self.reused = reused
        self.made = made
        self.idle_bytes = idle_bytes
        self.in_use_bytes = in_use_bytes
        self.high_water = high_water

    def __repr__(self) -> str:
        return (f"CacheStats(reused={self.reused}, made={self.made}, idle_bytes={self.idle_bytes}, "
                f"in_use_bytes={self.in_use_bytes}, high_water={self.high_water})")


def stats() -> CacheStats:
    with _lock:
        _file_returned()
        return CacheStats(_reused, _made, _idle_bytes, _in_use_bytes, _high_water)


def _release(block: torch.Tensor) -> None:
    """A buffer's last view died (a finalizer: any thread, and inside any allocation the garbage
    collector interrupts, even one made while this thread holds ``_lock``): so it only queues the block,
    without the lock; the next :func:`_take` or :func:`stats` files it."""
    _returned.append(block)


def _file_returned() -> None:
    """Move returned blocks to the idle cache (or drop them past :data:`IDLE_LIMIT`); ``_lock`` held."""
    global _idle_bytes, _in_use_bytes
    while _returned:
        block = _returned.pop()
        size = block.numel()
        _in_use_bytes -= size
        if _idle_bytes + size > IDLE_LIMIT:
            continue  # not kept: the memory goes back to the C allocator
        _idle.setdefault(size, []).append(block)
        _idle_bytes += size


def _take(size: int) -> torch.Tensor:
    """The smallest idle block of at least ``size`` bytes, or a fresh one of ``size`` (dropping idle
    blocks first to stay under the high-water mark)."""
    global _idle_bytes, _in_use_bytes, _high_water, _reused, _made
    with _lock:
        _file_returned()
        fits = [s for s, blocks in _idle.items() if s >= size and blocks]
        if fits:
            best = min(fits)
            block = _idle[best].pop()
            _idle_bytes -= best
            _in_use_bytes += best
            _reused += 1
            return block
        # a miss: make room under the high-water mark, the largest idle blocks first
        mark = max(_high_water, _in_use_bytes + size)
        dropped: list[torch.Tensor] = []
        for other in sorted(_idle, reverse=True):
            while _idle[other] and _idle_bytes + _in_use_bytes + size > mark:
                dropped.append(_idle[other].pop())
                _idle_bytes -= other
        for other in [s for s, left in _idle.items() if not left]:
            del _idle[other]
        _in_use_bytes += size
        _high_water = mark
        _made += 1
    del dropped  # freed outside the lock
    return torch.empty(size, dtype=torch.uint8)


def empty(nbytes: int) -> torch.Tensor:
    """A 1-D uint8 CPU tensor of ``nbytes`` bytes, 64-byte aligned, contents unspecified."""
    if nbytes < MIN_BYTES:
        return torch.empty(nbytes, dtype=torch.uint8)
    block = _take(block_size(nbytes))
    view = (ctypes.c_uint8 * nbytes).from_address(block.data_ptr())
    weakref.finalize(view, _release, block).atexit = False
    return torch.frombuffer(view, dtype=torch.uint8)


def clear() -> None:
    """Drop every idle block (the memory goes back to the C allocator); buffers in use are untouched."""
    global _idle_bytes
    with _lock:
        _file_returned()
        dropped = [b for blocks in _idle.values() for b in blocks]
        _idle.clear()
        _idle_bytes = 0
    del dropped

