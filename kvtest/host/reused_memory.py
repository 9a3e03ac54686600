"""Host memory for kvtest's large buffers, reused from test to test instead of freshly touched each time.

A test's patterns, expected states, the sim's device memory and its memory pools are large, short-lived
buffers. Fresh ones come from the kernel as untouched pages: each first write faults and zeroes a page,
which measured about 4-6x the cost of writing the same bytes into memory touched before (1.28 GiB of
patterns: 1.1 s fresh, 0.28 s touched, here). :func:`empty` hands out buffers from one reserved range of
address space (an arena, as a device's caching allocator has), so the pages an earlier buffer touched
serve the next one whatever its size: the nightly profile's tests use 2 MiB to 896 MiB buffers in turn,
and blocks kept per size (this module's first design) left most of them fresh anyway.

What it promises:

- A buffer's range returns to the arena only when nothing references its memory any more: the buffer
  is a tensor over a ctypes view of the range (``torch.frombuffer``), and the range comes back when that
  view is collected, which happens after the last tensor or view sharing its storage is gone.
- Contents are unspecified (the bytes of an earlier test, like device memory), as ``torch.empty``'s.
- The arena never makes this process hold more than the most its buffers ever held in use at once:
  before fresh pages are touched, idle touched pages are given back (``madvise(MADV_DONTNEED)``) until
  the idle bytes, the bytes in use and the fresh ones fit under that high-water mark (the first buffers
  of a run raise the mark, as they would without the arena). Nothing is retained beyond a role's peak.
- Idle touched bytes never exceed :data:`IDLE_LIMIT` (an eighth of the host's memory): several roles
  share a host, and each keeping its own peak idle put the nightly profile's four roles under memory
  pressure here (24 GiB; single tests then ran 2-6x slower).

Buffers under :data:`MIN_BYTES` are plain ``torch.empty``: the C allocator reuses small ones already. So
is a buffer the arena has no room for (it reserves the host's memory size of address space, no memory).
"""

from __future__ import annotations

import ctypes
import gc
import mmap
import os
import sys
import threading
import weakref

import torch

from kvtest.host import busy

__all__ = [
    "IDLE_LIMIT", "MIN_BYTES", "CacheStats", "block_size", "clear", "empty", "prefault", "stats", "sweep",
]

#: smaller buffers are not cached
MIN_BYTES = 1 << 20
_PAGE = mmap.PAGESIZE
#: Linux's MAP_NORESERVE (not in Python's mmap module before 3.13): reserve address space, commit nothing
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if sys.platform.startswith("linux") else 0)


def _host_memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


#: the most idle touched bytes one process keeps
IDLE_LIMIT = _host_memory() // 8
#: address space the arena reserves (pages are committed only when a buffer writes them)
RESERVE = _host_memory()


def block_size(nbytes: int) -> int:
    """The bytes a buffer of ``nbytes`` takes: the next quarter step of a power of two (at most 25% more,
    so ranges freed by one test fit the next test's slightly different sizes), in whole pages."""
    top = 1 << (max(nbytes, 1) - 1).bit_length()  # the power of two at or above nbytes
    step = max(top // 8, 1)
    rounded = -(-nbytes // step) * step
    return -(-rounded // _PAGE) * _PAGE


class CacheStats:
    """How the arena has done in this process (for benchmarks and tests).

    ``reused``/``made``: buffers that found only touched pages / needed fresh ones; ``fresh_bytes``: the
    pages touched for the first time (or again after being given back); ``idle_bytes``: touched pages no
    buffer uses."""

    def __init__(self, reused: int, made: int, idle_bytes: int, in_use_bytes: int, high_water: int,
                 fresh_bytes: int = 0) -> None:
        self.reused = reused
        self.made = made
        self.idle_bytes = idle_bytes
        self.in_use_bytes = in_use_bytes
        self.high_water = high_water
        self.fresh_bytes = fresh_bytes

    def __repr__(self) -> str:
        return (f"CacheStats(reused={self.reused}, made={self.made}, idle_bytes={self.idle_bytes}, "
                f"in_use_bytes={self.in_use_bytes}, high_water={self.high_water}, "
                f"fresh_bytes={self.fresh_bytes})")


def _overlap(a0: int, a1: int, intervals: list[list[int]]) -> int:
    return sum(max(0, min(a1, e) - max(a0, s)) for s, e in intervals)


def _subtract(intervals: list[list[int]], a0: int, a1: int) -> list[list[int]]:
    """``intervals`` (disjoint ``[start, end)``) without ``[a0, a1)``."""
    out: list[list[int]] = []
    for s, e in intervals:
        if e <= a0 or s >= a1:
            out.append([s, e])
            continue
        if s < a0:
            out.append([s, a0])
        if e > a1:
            out.append([a1, e])
    return out


def _add(intervals: list[list[int]], a0: int, a1: int) -> list[list[int]]:
    """``intervals`` with ``[a0, a1)`` added, merged with its neighbours (sorted, disjoint)."""
    out: list[list[int]] = []
    for s, e in sorted([*intervals, [a0, a1]]):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


class _Arena:
    """Reserved address space, handed out where a buffer finds the most touched pages; ``_lock`` guards
    every call."""

    def __init__(self, reserve: int) -> None:
        reserve = reserve // _PAGE * _PAGE
        self._map = mmap.mmap(-1, reserve, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self._anchor = ctypes.c_char.from_buffer(self._map)  # an export: the map can never be closed
        self.base = ctypes.addressof(self._anchor)
        self.free: list[list[int]] = [[0, reserve]]  # ranges no buffer uses, sorted, merged
        self.cold: list[list[int]] = [[0, reserve]]  # ranges never touched or given back

    def idle_touched(self) -> int:
        return sum(e - s for s, e in self.free) - sum(e - s for s, e in self.cold)

    def give_back(self, start: int, end: int) -> None:
        """Return free touched pages in ``[start, end)`` to the kernel: they are fresh when reused."""
        for s, e in self.free:
            s, e = max(s, start), min(e, end)
            if s < e:
                self._map.madvise(mmap.MADV_DONTNEED, s, e - s)
                self.cold = _add(self.cold, s, e)

    def trim(self, keep: int) -> None:
        """Give back idle touched pages until at most ``keep`` bytes of them stay, largest ranges first
        (from their ends)."""
        excess = self.idle_touched() - keep
        if excess <= 0:
            return
        touched = [[s, e] for s, e in self.free]
        for s, e in self.cold:
            touched = _subtract(touched, s, e)
        for s, e in sorted(touched, key=lambda r: r[0] - r[1]):
            if excess <= 0:
                break
            cut = min(e - s, -(-excess // _PAGE) * _PAGE)
            self.give_back(e - cut, e)
            excess -= cut

    def place(self, size: int) -> tuple[int, int] | None:
        """Where a buffer of ``size`` bytes goes: (offset, fresh bytes), the free range start with the
        most touched bytes under it (the smallest such range on a tie); None when no range fits."""
        best: tuple[int, int, int] | None = None  # (fresh, length, offset)
        for s, e in self.free:
            if e - s >= size:
                candidate = (_overlap(s, s + size, self.cold), e - s, s)
                if best is None or candidate < best:
                    best = candidate
        return None if best is None else (best[2], best[0])

    def coldest(self, size: int) -> int | None:
        """The lowest offset of ``size`` free bytes none of which were touched; None when there is none."""
        for s, e in self.cold:  # cold ranges are free: taking a range removes it from them
            if e - s >= size:
                return s
        return None

    def take(self, offset: int, size: int) -> None:
        self.free = _subtract(self.free, offset, offset + size)
        self.cold = _subtract(self.cold, offset, offset + size)

    def put(self, offset: int, size: int) -> None:
        self.free = _add(self.free, offset, offset + size)


_lock = threading.Lock()
_arena: _Arena | None = None
_no_arena = False  # the reservation failed: every buffer is plain torch.empty
_returned: list[tuple[int, int]] = []  # ranges whose buffers died, not yet filed (see _release)
_in_use_bytes = 0
_high_water = 0
_reused = 0
_made = 0
_fresh_bytes = 0
_swept_in_use = 0  # bytes in use after the last sweep that collected
_prefaulting = False  # a prefault() runs


def _the_arena() -> _Arena | None:
    global _arena, _no_arena
    if _arena is None and not _no_arena:
        try:
            _arena = _Arena(RESERVE)
        except (OSError, ValueError, OverflowError):
            _no_arena = True
    return _arena


def stats() -> CacheStats:
    with _lock:
        _file_returned()
        idle = _arena.idle_touched() if _arena is not None else 0
        return CacheStats(_reused, _made, idle, _in_use_bytes, _high_water, _fresh_bytes)


def _release(offset: int, size: int) -> None:
    """A buffer's last view died (a finalizer: any thread, and inside any allocation the garbage
    collector interrupts, even one made while this thread holds ``_lock``): so it only queues the range,
    without the lock; the next :func:`_take` or :func:`stats` files it."""
    _returned.append((offset, size))


def _file_returned() -> None:
    """Move returned ranges to the free list, then keep idle touched pages under :data:`IDLE_LIMIT`;
    ``_lock`` held."""
    global _in_use_bytes
    if not _returned or _arena is None:
        return
    while _returned:
        offset, size = _returned.pop()
        _in_use_bytes -= size
        _arena.put(offset, size)
    _arena.trim(IDLE_LIMIT)


def _take(size: int) -> int | None:
    """The arena offset of ``size`` free bytes, touched ones first (giving idle touched pages back first
    to stay under the high-water mark when fresh ones are needed); None when the arena cannot hold it."""
    global _in_use_bytes, _high_water, _reused, _made, _fresh_bytes
    with _lock:
        arena = _the_arena()
        if arena is None:
            return None
        _file_returned()
        where = arena.place(size)
        if where is None:
            return None
        offset, fresh = where
        mark = max(_high_water, _in_use_bytes + size)
        arena.take(offset, size)
        if fresh:
            # fresh pages are about to be touched: idle touched ones + in use + this buffer <= the mark
            arena.trim(mark - _in_use_bytes - size)
            _made += 1
            _fresh_bytes += fresh
        else:
            _reused += 1
        _in_use_bytes += size
        _high_water = mark
        return offset


def empty(nbytes: int) -> torch.Tensor:
    """A 1-D uint8 CPU tensor of ``nbytes`` bytes, page aligned, contents unspecified."""
    if nbytes < MIN_BYTES:
        return torch.empty(nbytes, dtype=torch.uint8)
    size = block_size(nbytes)
    offset = _take(size)
    if offset is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    assert _arena is not None
    view = (ctypes.c_uint8 * nbytes).from_address(_arena.base + offset)
    weakref.finalize(view, _release, offset, size).atexit = False
    return torch.frombuffer(view, dtype=torch.uint8)


def clear() -> None:
    """Give every idle touched page back to the kernel; buffers in use are untouched."""
    with _lock:
        _file_returned()
        if _arena is not None:
            _arena.trim(0)


def sweep() -> int:
    """Between tests: collect garbage cycles when more bytes are in use than after the last collection;
    the bytes that came back.

    A finished test's buffers normally die with its fixtures, but a reference cycle keeps them until the
    cyclic collector's next full pass, which can be many tests later. The usual cycle is the test's own:
    ``with pytest.raises(...) as exc`` keeps a traceback that holds the test's frame, whose locals hold
    ``exc`` (and the test's caches, tensors, LLMDataDist). The next test then touches fresh pages for
    what the dead one still holds (measured: every ``test_pull_cache`` left its 64 MiB pool behind).
    It collects only when bytes were left behind (a full collection walks every tracked object: 90 ms in
    a role process, 0.1 ms once :mod:`kvtest.plugin` has frozen what collection made); bytes still in
    use after it (a module or session fixture's buffers) become the new baseline.
    """
    global _swept_in_use
    with _lock:
        _file_returned()
        before = _in_use_bytes
    if before <= _swept_in_use:
        _swept_in_use = before
        return 0
    gc.collect()
    with _lock:
        _file_returned()
        _swept_in_use = _in_use_bytes
    return before - _swept_in_use


#: prefault() touches this much at a time, holding no more of the arena than that
PREFAULT_STEP = 16 << 20
#: how long prefault() waits, at most, before each step while the host is busy (kvtest.host.busy)
PREFAULT_ASIDE_S = 5.0


def prefault(nbytes: int, first: bool = True, after: int = 0) -> int:
    """Touch fresh arena pages, in the calling thread, until this process holds ``nbytes`` (at most
    :data:`IDLE_LIMIT`) of touched pages, in use or idle, for the buffers to come; the bytes it touched.

    For a process that will need that much (a role whose tests make a cache that large): its buffers then
    land on touched pages instead of faulting fresh ones while its peers wait. It runs at the lowest CPU
    priority (the thread's nice value, where the OS has one), so it takes only what the process's and its
    peers' work leaves idle; it holds one step of the arena at a time, so a buffer asked for meanwhile is
    served at once (on the pages touched so far, or fresh ones), and what that buffer touched counts.
    ``nbytes`` raises the high-water mark: the limits that give idle pages back keep these.

    It touches nothing while a process on the host times a transfer (:mod:`kvtest.host.busy`), and,
    unless this role's tests are among the ``first`` of the run, nothing while such a role touches its
    own, nor while one of the ``after`` later roles that need theirs before this one does touches: the
    roles of one host share its cores, and memory needed first is touched first.
    """
    global _prefaulting, _high_water
    nbytes = min(nbytes, IDLE_LIMIT) // _PAGE * _PAGE
    with _lock:
        arena = _the_arena()
        if nbytes < MIN_BYTES or _prefaulting or arena is None:
            return 0
        _prefaulting = True
        _high_water = max(_high_water, nbytes)
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only, on Linux
    except (AttributeError, OSError):
        pass
    signs: tuple[str, ...]
    if first:
        signs, own = (busy.TIMING,), busy.FIRST_TOUCH
    else:
        signs = (busy.TIMING, busy.FIRST_TOUCH, *(busy.later_touch(rank) for rank in range(after)))
        own = busy.later_touch(after)
    try:
        with busy.busy(own, wait=PREFAULT_ASIDE_S):
            return _touch(arena, nbytes, signs)
    finally:
        with _lock:
            _prefaulting = False


def _touch(arena: _Arena, nbytes: int, signs: tuple[str, ...]) -> int:
    """prefault()'s loop: one step of fresh pages at a time, each while no sign in ``signs`` is held."""
    global _in_use_bytes, _made, _fresh_bytes
    touched = 0
    while True:
        with busy.aside(signs, PREFAULT_ASIDE_S):
            with _lock:
                _file_returned()
                step = min(PREFAULT_STEP, nbytes - _in_use_bytes - arena.idle_touched()) // _PAGE * _PAGE
                offset = arena.coldest(step) if step > 0 else None
                if offset is None:
                    break
                arena.take(offset, step)
                _in_use_bytes += step
                _made += 1
                _fresh_bytes += step
            try:
                pages = (ctypes.c_uint8 * step).from_address(arena.base + offset)
                torch.frombuffer(pages, dtype=torch.uint8)[::_PAGE].zero_()  # one write a page
            finally:
                with _lock:
                    arena.put(offset, step)
                    _in_use_bytes -= step
        touched += step
    return touched
