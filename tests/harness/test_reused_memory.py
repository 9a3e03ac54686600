"""kvtest.host.reused_memory: a block comes back only when nothing views its memory, and the cache never
holds more than the process's own high-water mark."""

from __future__ import annotations

import ctypes
import gc
import resource
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from kvtest import patterns
from kvtest.host import busy, reused_memory

MIB = 1 << 20


def taken(nbytes: int) -> int:
    """The arena bytes a buffer of ``nbytes`` takes."""
    return reused_memory.block_size(nbytes)


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(busy, "FOLDER", tmp_path)  # the host's busy signs: not a kvtest run's beside
    monkeypatch.setattr(reused_memory, "_arena", reused_memory._Arena(256 * MIB))
    for name, value in (("_returned", []), ("_in_use_bytes", 0), ("_high_water", 0), ("_reused", 0), ("_made", 0),
                        ("_fresh_bytes", 0), ("_swept_in_use", 0), ("_prefaulting", False)):
        monkeypatch.setattr(reused_memory, name, value)


def _handed_out_while_viewed(empty: Callable[[int], torch.Tensor]) -> bool:
    """Whether ``empty`` hands out a block again while a view of the buffer in it is alive."""
    first = empty(3 * MIB)
    address = first.data_ptr()
    view = first.view(torch.float16).reshape(16, -1).movedim(0, 1)  # a view of a view keeps it alive
    del first
    gc.collect()
    other = empty(3 * MIB)
    try:
        return other.data_ptr() == address
    finally:
        del view, other
        gc.collect()


def _release_with_the_tensor(nbytes: int) -> torch.Tensor:
    """A broken cache: the range returns when the handed-out tensor object dies, not its memory's views."""
    size = reused_memory.block_size(nbytes)
    offset = reused_memory._take(size)
    assert offset is not None and reused_memory._arena is not None
    tensor = torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(reused_memory._arena.base + offset),
                              dtype=torch.uint8)
    weakref.finalize(tensor, reused_memory._release, offset, size)
    return tensor


def test_a_live_view_keeps_its_block_and_the_check_catches_a_cache_that_does_not() -> None:
    assert not _handed_out_while_viewed(reused_memory.empty)
    assert _handed_out_while_viewed(_release_with_the_tensor)


def test_a_dead_buffer_is_reused() -> None:
    first = reused_memory.empty(3 * MIB)
    address = first.data_ptr()
    view = first.view(torch.float16).reshape(16, -1)
    del first, view
    gc.collect()
    again = reused_memory.empty(3 * MIB)
    assert again.data_ptr() == address
    assert reused_memory.stats().reused == 1


def test_writes_to_a_new_buffer_never_reach_a_live_one() -> None:
    """What the cache must never do: hand out memory someone still reads (a check would then compare
    bytes another buffer wrote). Every live buffer keeps its bytes while new ones are written."""
    live = [reused_memory.empty(2 * MIB + i) for i in range(4)]
    for i, buffer in enumerate(live):
        buffer.fill_(i + 1)
    for _ in range(3):
        scratch = [reused_memory.empty(2 * MIB + i) for i in range(4)]
        for buffer in scratch:
            buffer.fill_(0xEE)
        del scratch
    for i, buffer in enumerate(live):
        assert bool((buffer == i + 1).all())


def test_the_cache_stays_under_the_high_water_mark() -> None:
    held = [reused_memory.empty(8 * MIB) for _ in range(4)]  # the mark: 32 MiB in use at once
    del held
    assert reused_memory.stats().idle_bytes == 4 * taken(8 * MIB)
    # the first 20 MiB buffer lies on touched pages, the second needs 8 MiB of fresh ones
    bigger = [reused_memory.empty(20 * MIB) for _ in range(2)]
    state = reused_memory.stats()
    assert state.idle_bytes + state.in_use_bytes <= state.high_water == 2 * taken(20 * MIB)
    del bigger


def test_idle_touched_pages_stay_under_the_idle_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reused_memory, "IDLE_LIMIT", 10 * MIB)
    held = [reused_memory.empty(4 * MIB) for _ in range(4)]
    del held
    assert reused_memory.stats().idle_bytes == 10 * MIB


def test_a_smaller_buffer_lies_on_touched_pages() -> None:
    blocks = [reused_memory.empty(size * MIB) for size in (4, 16)]
    addresses = [b.data_ptr() for b in blocks]
    del blocks
    assert reused_memory.empty(3 * MIB).data_ptr() == addresses[0]


def test_block_sizes_are_at_most_a_quarter_step_above_the_request() -> None:
    for nbytes in (MIB, MIB + 1, 3 * MIB - 7, 16 * MIB, 16 * MIB + 1, 1000 * MIB):
        size = reused_memory.block_size(nbytes)
        assert nbytes <= size <= nbytes * 1.25 + 1


def test_small_buffers_are_plain_tensors() -> None:
    small = reused_memory.empty(reused_memory.MIN_BYTES - 1)
    assert small.numel() == reused_memory.MIN_BYTES - 1
    assert reused_memory.stats().made == 0


def test_patterns_in_reused_memory_are_the_same_bytes() -> None:
    """Reused memory holds an earlier test's bytes; a pattern overwrites every one of them."""
    shape, dtype = (6, 262147), torch.float16  # not a whole number of words
    fresh = patterns.pattern(shape, dtype, seed=7, tensor_index=3, side="p").clone()
    for _ in range(2):
        junk = patterns.pattern(shape, dtype, seed=8, tensor_index=1, side="d")
        junk.view(torch.uint8).fill_(0xA5)
        del junk
        again = patterns.pattern(shape, dtype, seed=7, tensor_index=3, side="p")
        assert reused_memory.stats().reused >= 1
        assert patterns.same_bytes(fresh, again)
        del again


def test_a_buffer_collected_while_the_cache_is_locked_is_filed_later() -> None:
    """The garbage collector runs finalizers inside whatever allocation triggers it, also one made while
    this module holds its lock: a release that waited for the lock would hang the role (seen: a nightly
    test stuck for 9 minutes). The buffer here dies in a reference cycle, collected under the lock."""
    seen: list[int] = []

    def run() -> None:
        holder: list[object] = [reused_memory.empty(4 * MIB)]
        holder.append(holder)  # a cycle: only the collector frees it
        with reused_memory._lock:
            del holder
            gc.collect()  # the buffer's finalizer runs here, under the lock
        seen.append(reused_memory.stats().idle_bytes)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert seen == [taken(4 * MIB)], "a finalizer under the cache's lock did not complete"


def test_buffers_of_another_size_reuse_the_pages_earlier_ones_touched() -> None:
    """What the arena is for: the nightly profile's tests use buffers of sizes the earlier tests did not
    (16 MiB tensors, then 32 MiB ones), and every page touched before serves again."""
    held = [reused_memory.empty(16 * MIB) for _ in range(4)]
    del held
    fresh = reused_memory.stats().fresh_bytes
    assert fresh == 4 * taken(16 * MIB)
    bigger = [reused_memory.empty(32 * MIB) for _ in range(2)]
    smaller = [reused_memory.empty(5 * MIB) for _ in range(2)]
    del bigger
    bigger = [reused_memory.empty(24 * MIB)]
    state = reused_memory.stats()
    assert state.fresh_bytes == fresh + 10 * MIB  # only what the 64 MiB touched before could not hold
    assert state.made == 4 + 2 and state.reused == 3  # the first four and the two 5 MiB ones were fresh
    del bigger, smaller


def test_given_back_pages_are_the_kernels_again() -> None:
    """clear() (and the idle limit) really return pages: their bytes read as zeros afterwards, and a
    buffer on them counts as fresh."""
    buffer = reused_memory.empty(4 * MIB)
    buffer.fill_(0xAB)
    address = buffer.data_ptr()
    del buffer
    again = reused_memory.empty(4 * MIB)
    assert again.data_ptr() == address and int(again[123]) == 0xAB  # reused: the old bytes
    del again
    reused_memory.clear()
    assert reused_memory.stats().idle_bytes == 0
    after = reused_memory.empty(4 * MIB)
    assert after.data_ptr() == address and int(after.max()) == 0  # the kernel's zero pages
    assert reused_memory.stats().fresh_bytes == 2 * taken(4 * MIB)
    del after


def test_a_buffer_the_arena_cannot_hold_is_a_plain_tensor() -> None:
    held = reused_memory.empty(200 * MIB)
    outside = reused_memory.empty(100 * MIB)  # 256 MiB arena
    assert reused_memory._arena is not None
    base = reused_memory._arena.base
    assert base <= held.data_ptr() < base + 256 * MIB
    assert not base <= outside.data_ptr() < base + 256 * MIB
    outside.fill_(1)
    assert int(outside.sum()) == 100 * MIB
    del held, outside



def _counting_collections(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """gc.collect as reused_memory calls it, counted."""
    calls: list[int] = []
    real = gc.collect

    def collect(*args: int) -> int:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(reused_memory.gc, "collect", collect)
    return calls


def test_sweep_frees_a_buffer_a_dead_cycle_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a test's ``with pytest.raises(...) as exc`` leaves: a frame, its traceback and its locals in a
    cycle. The sweep gives the buffer back before the next test touches fresh pages for its own."""
    calls = _counting_collections(monkeypatch)
    gc.disable()  # only the sweep may collect here
    try:
        holder: list[object] = [reused_memory.empty(8 * MIB)]
        holder.append(holder)
        del holder
        assert reused_memory.stats().in_use_bytes == taken(8 * MIB)  # the cycle keeps it
        assert reused_memory.sweep() == taken(8 * MIB)
        assert reused_memory.stats().in_use_bytes == 0 and len(calls) == 1
        assert reused_memory.sweep() == 0 and len(calls) == 1  # nothing left behind: no collection
    finally:
        gc.enable()


def test_sweep_takes_buffers_still_in_use_as_its_baseline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buffer a live fixture holds is not garbage: one collection finds that out, and later sweeps do
    not pay for it again until more bytes are left behind."""
    calls = _counting_collections(monkeypatch)
    kept = reused_memory.empty(4 * MIB)
    assert reused_memory.sweep() == 0 and len(calls) == 1
    assert reused_memory.sweep() == 0 and len(calls) == 1
    more = reused_memory.empty(2 * MIB)
    assert reused_memory.sweep() == 0 and len(calls) == 2
    del more
    assert reused_memory.sweep() == 0 and len(calls) == 2  # fewer bytes in use: the baseline follows
    del kept


def test_the_plugin_sweeps_before_each_test(pytester: pytest.Pytester) -> None:
    """The sweep is wired into every test's set-up: a buffer an earlier test left in a dead cycle is back
    in the arena when the next test starts (the automatic collector is off, so only the sweep frees it)."""
    pytester.makepyfile(
        """
        import gc
        from kvtest.host import reused_memory

        START = []

        def test_leaves_a_cycle():
            START.append(reused_memory.stats().in_use_bytes)
            gc.disable()
            holder = [reused_memory.empty(8 << 20)]
            holder.append(holder)

        def test_starts_without_it():
            try:
                assert reused_memory.stats().in_use_bytes == START[0]
            finally:
                gc.enable()
        """
    )
    try:
        pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)
    finally:
        gc.enable()


# -- prefault: pages touched ahead, for the buffers to come ------------------------------------------


def _prefault(nbytes: int, first: bool = True, after: int = 0) -> int:
    """``reused_memory.prefault`` in a thread of its own, as the sim runs it (it lowers its thread's
    priority, which must not stay on the test's)."""
    out: list[int] = []
    worker = threading.Thread(target=lambda: out.append(reused_memory.prefault(nbytes, first, after)))
    worker.start()
    worker.join(60)
    assert not worker.is_alive() and len(out) == 1
    return out[0]


def _faults_while_writing(buffer: torch.Tensor) -> int:
    """The page faults this process took while every byte of ``buffer`` was written."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer.fill_(1)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_prefault_leaves_touched_pages_that_the_next_buffers_land_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reused_memory, "PREFAULT_STEP", 3 * MIB)  # steps that do not divide it evenly
    assert _prefault(40 * MIB) == 40 * MIB
    after = reused_memory.stats()
    assert (after.in_use_bytes, after.idle_bytes, after.fresh_bytes) == (0, 40 * MIB, 40 * MIB)
    assert after.high_water == 40 * MIB  # what it was asked to hold: the limits keep it
    a, b = reused_memory.empty(24 * MIB), reused_memory.empty(16 * MIB)
    assert reused_memory.stats().fresh_bytes == 40 * MIB  # both on the touched pages: nothing fresh
    c = reused_memory.empty(40 * MIB)
    assert reused_memory.stats().fresh_bytes == 80 * MIB  # beyond them, fresh pages
    # and the pages really were touched: writing a and b faults far less than writing c (the control)
    touched, fresh = _faults_while_writing(a) + _faults_while_writing(b), _faults_while_writing(c)
    assert touched * 4 < fresh, (touched, fresh)
    del a, b, c


def test_a_later_roles_prefault_holds_its_rank_and_steps_aside_for_the_ranks_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held: list[str] = []
    asides: list[tuple[str, ...]] = []
    real_busy, real_aside = busy.busy, busy.aside

    def spy_busy(sign: str, wait: float = 0.0) -> Any:
        held.append(sign)
        return real_busy(sign, wait)

    def spy_aside(signs: tuple[str, ...], deadline: float) -> Any:
        asides.append(signs)
        return real_aside(signs, deadline)

    monkeypatch.setattr(busy, "busy", spy_busy)
    monkeypatch.setattr(busy, "aside", spy_aside)
    assert _prefault(4 * MIB, first=False, after=2) == 4 * MIB
    assert held == [busy.later_touch(2)]
    assert asides and set(asides) == {(busy.TIMING, busy.FIRST_TOUCH, busy.later_touch(0), busy.later_touch(1))}
    reused_memory.clear()
    held.clear()
    asides.clear()
    assert _prefault(4 * MIB) == 4 * MIB
    assert held == [busy.FIRST_TOUCH] and set(asides) == {(busy.TIMING,)}


def test_prefault_tops_up_what_the_process_already_holds() -> None:
    held = reused_memory.empty(24 * MIB)  # a test's buffer: touched pages in use
    spare = reused_memory.empty(8 * MIB)
    del spare  # and idle ones
    assert _prefault(40 * MIB) == 8 * MIB
    assert _prefault(40 * MIB) == 0  # nothing left to do
    after = reused_memory.stats()
    assert (after.in_use_bytes, after.idle_bytes) == (24 * MIB, 16 * MIB)
    del held


def test_prefault_holds_one_step_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A buffer asked for while it runs is served beside it at once, not after it."""
    monkeypatch.setattr(reused_memory, "PREFAULT_STEP", MIB)
    most: list[int] = []
    real_put = reused_memory._Arena.put

    def put(arena: reused_memory._Arena, offset: int, size: int) -> None:  # runs with the lock held
        most.append(reused_memory._in_use_bytes)
        real_put(arena, offset, size)

    monkeypatch.setattr(reused_memory._Arena, "put", put)
    assert _prefault(32 * MIB) == 32 * MIB
    assert max(most) == MIB, most


def test_prefault_keeps_to_the_idle_limit_and_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reused_memory, "IDLE_LIMIT", 8 * MIB)
    assert _prefault(100 * MIB) == 8 * MIB
    assert _prefault(MIB // 2) == 0  # below MIN_BYTES: not worth a thread's time
    monkeypatch.setattr(reused_memory, "_prefaulting", True)  # another one is running
    assert _prefault(16 * MIB) == 0


@pytest.mark.parametrize("first", [True, False])
def test_prefault_steps_aside_for_a_first_role_only_when_it_is_not_one(
    first: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # one step: a late role waits the deadline before it, a first one does not. The first role's deadline
    # is long, so touching 8 MiB fresh on a loaded host (CI: 0.3 s was not enough once) cannot reach it.
    aside = 3.0 if first else 0.3
    monkeypatch.setattr(reused_memory, "PREFAULT_ASIDE_S", aside)
    with busy.busy(busy.FIRST_TOUCH):  # another role whose tests come first is touching
        start = time.monotonic()
        assert _prefault(8 * MIB, first) == 8 * MIB
        took = time.monotonic() - start
    assert took < aside if first else took >= aside


def test_prefault_touches_nothing_while_a_transfer_is_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reused_memory, "PREFAULT_ASIDE_S", 0.3)
    with busy.busy(busy.TIMING):
        start = time.monotonic()
        assert _prefault(8 * MIB) == 8 * MIB
        assert time.monotonic() - start >= 0.3
