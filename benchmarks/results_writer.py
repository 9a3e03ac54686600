"""p0's results file, rewritten after every test: the writer against the whole document serialized
each time, side by side, over the tests of a results file (the shipped smoke results by default).

    python benchmarks/results_writer.py
    python benchmarks/results_writer.py run.json --repeat 5

Both columns write the same bytes to a file after every test (atomically, with fsync, as
``write_atomically`` does); ``whole document`` is ``json.dumps(doc, indent=2)`` each time, what
``ResultsWriter`` did before it kept each test's text. The figure is the total over the run, the best
of ``--repeat``: time p0 spends between a test's teardown and announcing the next one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvtest.results.results import ResultsWriter, write_atomically  # noqa: E402

DEFAULT = ROOT / "tests" / "harness" / "data" / "sim-smoke-results.json"


def _writer(doc: dict[str, Any], folder: Path) -> float:
    writer = ResultsWriter(folder / "writer.json", run_id=doc["run_id"], fingerprint=doc["fingerprint"])
    start = time.perf_counter()
    for nodeid, t in doc["tests"].items():
        writer.add(nodeid, t["outcome"], t["roles"], t["transfers"], t["known_issue"], t["failure"],
                   t["failure_cause"])
    return time.perf_counter() - start


def _whole(doc: dict[str, Any], folder: Path) -> float:
    path = folder / "whole.json"
    partial = {**doc, "tests": {}}
    start = time.perf_counter()
    for nodeid, t in doc["tests"].items():
        partial["tests"][nodeid] = t
        write_atomically(path, json.dumps(partial, indent=2, allow_nan=False) + "\n")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=DEFAULT, help="a kvtest results file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    try:
        doc = json.loads(args.results.read_text())
        tests = len(doc["tests"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"{args.results} is not a kvtest results file ({exc})")
    best = {"whole document": float("inf"), "ResultsWriter": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):  # interleaved: the machines here are shared
            best["whole document"] = min(best["whole document"], _whole(doc, Path(tmp)))
            best["ResultsWriter"] = min(best["ResultsWriter"], _writer(doc, Path(tmp)))
        final = (Path(tmp) / "writer.json").stat().st_size
    print(f"{args.results.name}: {tests} tests, final file {final / 1024:.0f} KiB, best of {args.repeat}")
    for name, seconds in best.items():
        print(f"  {name:<15} {seconds:6.3f} s in all, {seconds / max(tests, 1) * 1e3:5.2f} ms a test")
    print(f"  ratio {best['whole document'] / best['ResultsWriter']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
