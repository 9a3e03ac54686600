"""kvtest.patterns beside torch's copy_: fill and check GB/s for a few KV shapes, one thread.

    python benchmarks/patterns.py              # 32 MiB per tensor, best of 5
    python benchmarks/patterns.py --mib 128 --repeat 9 --threads 2

Every figure is the tensor's bytes over the time of one call (decimal GB/s), the best of repeated,
interleaved calls on the same tensors (the machines here are shared: the best time is the stable
one). ``fill`` writes the pattern in place; ``check`` is ``patterns.compare`` of two equal tensors
(the path every passing test takes); ``pattern`` builds a fresh host tensor (what ``Node.expected``
does), beside ``clone`` of the same tensor. The ratios are against ``copy_`` (``pattern`` against
``clone``); the goal is at least 0.3x.

Last, an expected state after a block transfer that moved every other row (``Node.expected_after_rows``,
1 MiB rows): the base pattern written whole and then the moved rows over it, against the base written
only where no moved row lands (``pattern(skip_rows=...)``), side by side.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from kvtest import patterns

MiB = 1 << 20


def shapes(total: int) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(label, shape, dtype) of ``total`` bytes each."""
    return [
        ("wide rows (1 MiB)", (total // MiB, MiB // 2), torch.float16),
        ("narrow rows (16 B)", (total // 16, 8), torch.float16),
        ("int8, 128 KiB rows", (total // (128 * 1024), 128 * 1024), torch.int8),
        ("fp16, 64 KiB rows", (total // (64 * 1024), 32 * 1024), torch.float16),
        ("bf16, 64 KiB rows", (total // (64 * 1024), 32 * 1024), torch.bfloat16),
        ("fp32, 4 KiB rows", (total // 4096, 1024), torch.float32),
    ]


def best(calls: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """The fastest of ``repeat`` rounds for each call, the calls interleaved within a round."""
    times = {name: float("inf") for name in calls}
    for _ in range(repeat):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def measure(shape: tuple[int, ...], dtype: torch.dtype, repeat: int) -> dict[str, float]:
    a = torch.empty(shape, dtype=dtype)
    b = torch.empty(shape, dtype=dtype)
    where = {"seed": 1, "tensor_index": 0}
    patterns.fill(a, **where)  # first touch of every page, outside the timing
    b.copy_(a)
    times = best(
        {
            "copy_": lambda: b.copy_(a),
            "fill": lambda: patterns.fill(a, **where),
            "check": lambda: patterns.check(a, b, name="bench", tensor_index=0),
            "clone": lambda: a.clone(),
            "pattern": lambda: patterns.pattern(shape, dtype, **where),
        },
        repeat,
    )
    assert patterns.compare(a, b, name="bench", tensor_index=0) is None, "fill is not reproducible"
    return times


def moved_rows(total: int, repeat: int) -> dict[str, float]:
    """An expected state with every other 1 MiB row moved in from another pattern: two ways to make it."""
    shape, dtype = (total // MiB, MiB // 2), torch.float16
    src, dst = list(range(0, shape[0], 2)), list(range(1, shape[0], 2))
    moved = {"seed": 1, "tensor_index": 0, "side": "p", "src_rows": src, "dst_rows": dst}

    def made(skip: list[int]) -> torch.Tensor:
        own = patterns.pattern(shape, dtype, seed=1, tensor_index=0, side="d", skip_rows=skip)
        patterns.write_rows(own, **moved)  # type: ignore[arg-type]
        return own

    assert patterns.same_bytes(made([]), made(dst)), "the two ways differ"
    return best({"whole base": lambda: made([]), "base where none lands": lambda: made(dst)}, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=32, help="MiB per tensor (default 32)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the best is kept (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    total = args.mib * MiB
    head = (
        f"{'shape':<20} {'dtype':<9} {'copy_':>7} {'fill':>7} {'ratio':>6} {'check':>7} {'ratio':>6} "
        f"{'clone':>7} {'pattern':>8} {'ratio':>6}"
    )
    print(
        f"kvtest.patterns, {args.mib} MiB per tensor, {torch.get_num_threads()} thread(s), "
        f"best of {args.repeat}, GB/s (1e9 bytes/s)"
    )
    print(head)
    print("-" * len(head))
    worst = float("inf")
    for label, shape, dtype in shapes(total):
        times = measure(shape, dtype, args.repeat)
        rate = {name: total / seconds / 1e9 for name, seconds in times.items()}
        fill_ratio, check_ratio = rate["fill"] / rate["copy_"], rate["check"] / rate["copy_"]
        worst = min(worst, fill_ratio, check_ratio)
        dtype_name = str(dtype).removeprefix("torch.")
        print(
            f"{label:<20} {dtype_name:<9} {rate['copy_']:>7.2f} {rate['fill']:>7.2f} {fill_ratio:>5.2f}x "
            f"{rate['check']:>7.2f} {check_ratio:>5.2f}x {rate['clone']:>7.2f} {rate['pattern']:>8.2f} "
            f"{rate['pattern'] / rate['clone']:>5.2f}x"
        )
    print(f"worst fill/check ratio to copy_: {worst:.2f}x (goal 0.3x, moonshot 0.5x)")
    times = moved_rows(total, args.repeat)
    whole, skipped = times["whole base"], times["base where none lands"]
    print(f"expected state, every other 1 MiB row moved: whole base then rows {total / whole / 1e9:.2f} GB/s, "
          f"base only where no row lands {total / skipped / 1e9:.2f} GB/s ({whole / skipped:.2f}x)")


if __name__ == "__main__":
    main()
