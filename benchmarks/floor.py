"""The floor under a sample test's cost: what a 1p1d test pays before it registers a cache, beside what
the smoke target (outside/inside <= 4x) allows a test outside its transfers.

    python benchmarks/floor.py                      # the floor tests, then the smoke profile, side by side
    python benchmarks/floor.py --smoke smoke.json   # against an earlier smoke results file

The floor tests (``benchmarks/floor_tests.py``) run as the samples run (pytest, local mode, both roles on
this host), ``ROUNDS`` of each kind, and each checks what it did:

- ``rendezvous``: the ``kv`` fixture, one value published and read back, one barrier: kvtest alone;
- ``init``: and an LLMDataDist initialised (p listening) and finalised on both roles;
- ``link``: and d's ``link_clusters`` to p, and one more barrier;
- ``pull``: the smallest whole sample test (register, fill, pull 1 KiB, check every byte, unlink);
- ``pull_kept``: ``pull`` on one LLMDataDist per role made by the first test and kept by the others, as
  a session-scoped LLMDataDist would be (no init or finalize; d still links and unlinks);
- ``pull_linked``: and d's link kept too, as a decode process that keeps its LLMDataDist and links.

Per kind, the median of the tests' walls (a test's wall is its longest role's, as in the results file).
From smoke: the time in transfers per test with transfers, and 4x that, the outside time the target
leaves such a test. A sample test that inits, links and finalizes on every test cannot meet the target
when the ``link`` floor alone is over that allowance: no trimming of fills, checks or the harness gets
under it. The last line reads ``pull_linked``'s time outside its transfer against the allowance: whether
sharing the LLMDataDist and its links between tests (issue 27's session-scoped option) would.

Exit status: 0 when both runs produced results, 2 when one did not or a floor test failed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cost import RATIO_TARGETS, ProfileCost, cost_of_tests, run_profile  # noqa: E402

from kvtest.results.results import ResultsError, TestEntry, load_results  # noqa: E402

TESTS = "benchmarks/floor_tests.py"
#: the floor tests' kinds, in the order each adds to the one before
KINDS = {
    "test_rendezvous": "rendezvous only (kv fixture, a value published and read, a barrier)",
    "test_init": "+ LLMDataDist init and finalize on both roles",
    "test_link": "+ d's link_clusters to p and a barrier",
    "test_pull": "a whole pull test (register, fill, pull 1 KiB, check, unlink)",
    "test_pull_kept": "it on an LLMDataDist kept between tests (no init, finalize)",
    "test_pull_linked": "it on an LLMDataDist and a link kept between tests",
}


class Floor(NamedTuple):
    """One kind's median test: its wall (the longest role's) and its time in transfers, in seconds."""

    wall_s: float
    transfer_s: float


def floors(tests: Mapping[str, TestEntry]) -> dict[str, Floor]:
    """Each kind's median test, over its tests; a kind with a test that did not pass is left out."""
    walls: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}
    broken: set[str] = set()
    for nodeid, entry in tests.items():
        kind = nodeid.split("::")[-1].split("[")[0]
        if kind not in KINDS:
            continue
        if entry["outcome"] != "passed":
            broken.add(kind)
        walls.setdefault(kind, []).append(entry["cost"]["wall_s"])
        inside.setdefault(kind, []).append(entry["cost"]["transfer_s"])
    return {k: Floor(statistics.median(walls[k]), statistics.median(inside[k])) for k in walls if k not in broken}


def allowance(smoke: ProfileCost) -> tuple[float, float]:
    """Smoke's seconds in transfers per test with transfers, and what its ratio target leaves outside."""
    per_test = smoke.inside_s / smoke.timed_tests if smoke.timed_tests else 0.0
    return per_test, RATIO_TARGETS["smoke"] * per_test


def report(found: Mapping[str, Floor], smoke: ProfileCost) -> list[str]:
    lines = ["floor per test (median of each kind's tests; a test's wall is its longest role's; 1p1d):"]
    before = None
    for kind, label in KINDS.items():
        floor = found.get(kind)
        if floor is None:
            lines.append(f"  {label:<66} failed or missing")
            continue
        text = f"  {label:<66} {floor.wall_s * 1000:6.1f} ms"
        if floor.transfer_s > 0:
            outside = floor.wall_s - floor.transfer_s
            text += f", {floor.transfer_s * 1000:.1f} in transfers ({outside / floor.transfer_s:.1f}x outside)"
        elif before is not None:
            text += f" (+{(floor.wall_s - before) * 1000:.1f})"
        lines.append(text)
        before = floor.wall_s
    inside, allowed = allowance(smoke)
    goal = RATIO_TARGETS["smoke"]
    lines.append(f"smoke: {smoke.timed_tests} tests with transfers, {inside * 1000:.1f} ms a test in transfers "
                 f"({smoke.ratio:.1f}x outside); its {goal:g}x target leaves {allowed * 1000:.1f} ms a test outside")
    link = found.get("test_link")
    if link is not None:
        verdict = "over" if link.wall_s > allowed else "within"
        lines.append(f"a test that inits, links and finalizes spends {link.wall_s * 1000:.1f} ms before its first "
                     f"cache: {verdict} that allowance by {abs(link.wall_s - allowed) * 1000:.1f} ms")
    kept = found.get("test_pull_linked")
    if kept is not None:
        outside = kept.wall_s - kept.transfer_s
        verdict = "over" if outside > allowed else "within"
        lines.append(f"a pull test on an LLMDataDist and a link kept between tests spends {outside * 1000:.1f} ms "
                     f"outside its transfer: {verdict} that allowance by {abs(outside - allowed) * 1000:.1f} ms")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", type=Path, help="an earlier smoke results file instead of a run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvtest-floor-") as tmp:
        floors_dir = Path(tmp) / "floor"  # run_profile names its results file after the profile
        floors_dir.mkdir()
        floor_file, _, status = run_profile("smoke", floors_dir, [TESTS])
        smoke_file = args.smoke
        if smoke_file is None:
            smoke_file, _, _ = run_profile("smoke", Path(tmp), [])
        try:
            found = floors(load_results(floor_file).tests)
            smoke = cost_of_tests("smoke", dict(load_results(smoke_file).tests), None)
        except (ResultsError, OSError) as exc:
            print(f"floor.py: {exc}")
            return 2
    for line in report(found, smoke):
        print(line)
    return 0 if status == 0 and len(found) == len(KINDS) else 2


if __name__ == "__main__":
    raise SystemExit(main())
