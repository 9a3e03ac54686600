"""First touch of kvtest's arena (:mod:`kvtest.host.reused_memory`): with and without transparent huge
pages, side by side in one run.

    python benchmarks/first_touch.py                 # 1 GiB, 3 rounds
    python benchmarks/first_touch.py --mib 256 --repeat 5

Each round makes two fresh arenas, one that asked the kernel for huge pages (``madvise(MADV_HUGEPAGE)``,
what kvtest does) and one that did not, alternating which goes first, and times: one write a page over
``--mib`` (what ``reused_memory.prefault`` does), then a full copy into the touched memory (a fill of
pages already touched, the same for both). Printed: every round, and the best of each column.
The kernel's setting (/sys/kernel/mm/transparent_hugepage/enabled) decides whether the advice is
taken: under ``never`` both columns are small pages.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvtest.host import reused_memory  # noqa: E402

MIB = 1 << 20


def _round(huge: bool, nbytes: int, source: torch.Tensor) -> tuple[float, float]:
    """(seconds to touch ``nbytes`` fresh, one write a page; seconds to copy ``source`` over them)."""
    arena = reused_memory._Arena(nbytes + reused_memory.HUGE_PAGE, huge=huge)
    if huge and not arena.huge:
        raise SystemExit("first_touch: this kernel refused madvise(MADV_HUGEPAGE)")
    buffer = torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(arena.base), dtype=torch.uint8)
    start = time.perf_counter()
    buffer[:: reused_memory._PAGE].zero_()
    touched = time.perf_counter()
    buffer.copy_(source)
    copied = time.perf_counter()
    arena.give_back(0, nbytes + reused_memory.HUGE_PAGE)
    return touched - start, copied - touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB touched per arena (default 1024)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.mib < 2 or args.repeat < 1:
        parser.error(f"--mib {args.mib} --repeat {args.repeat}: need --mib >= 2 and --repeat >= 1")
    nbytes = args.mib * MIB
    source = torch.ones(nbytes, dtype=torch.uint8)
    try:
        setting = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        setting = "(no /sys/kernel/mm/transparent_hugepage)"
    print(f"transparent huge pages: {setting}; {args.mib} MiB per arena")
    print(f"{'round':>5}  {'touch, huge':>11}  {'touch, small':>12}  {'copy, huge':>10}  {'copy, small':>11}")
    best = {True: [float("inf")] * 2, False: [float("inf")] * 2}
    for i in range(args.repeat):
        got = {}
        for huge in ((True, False) if i % 2 == 0 else (False, True)):
            got[huge] = _round(huge, nbytes, source)
            best[huge] = [min(a, b) for a, b in zip(best[huge], got[huge])]
        print(f"{i + 1:>5}  {got[True][0]:>10.3f}s  {got[False][0]:>11.3f}s  {got[True][1]:>9.3f}s  {got[False][1]:>10.3f}s")
    ratio = best[False][0] / best[True][0] if best[True][0] > 0 else float("inf")
    print(f"{'best':>5}  {best[True][0]:>10.3f}s  {best[False][0]:>11.3f}s  {best[True][1]:>9.3f}s  "
          f"{best[False][1]:>10.3f}s")
    print(f"first touch with huge pages: {ratio:.1f}x faster ({args.mib / best[True][0] / 1024:.1f} GiB/s "
          f"against {args.mib / best[False][0] / 1024:.1f} GiB/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
