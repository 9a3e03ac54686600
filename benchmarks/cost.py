"""kvtest's own cost: where a profile's time goes, phase by phase, and the ratios its targets are set on.

    python benchmarks/cost.py                        # runs smoke, then nightly; prints both tables
    python benchmarks/cost.py --profiles smoke       # one profile
    python benchmarks/cost.py --results smoke=a.json --results nightly=b.json   # tables of earlier runs
    python benchmarks/cost.py --baseline smoke=old.json --baseline nightly=old2.json  # before/after

Each profile runs as a user runs it (``pytest -p no:cacheprovider --kv-profile P --kv-results F`` in
the repository root, local mode, every role on this host); the table is read from the results file:
each role's phases (``init``, ``register``, ``link``, ``fill``, ``expect``, ``transfer``, ``check``,
``teardown``, ``wait``, ``other``; measured with ``time.perf_counter`` where they happen, see
:mod:`kvtest.results.metrics`), summed over every role of every test, and the harness ratio the
summary prints (outside/inside transfers over the tests that timed transfers). The last lines hold the
targets of issue 27 (nightly outside/inside <= 3x, the whole nightly run <= 180 s, smoke <= 4x), each
marked met or not, and the load average (the figures move with other work on the host).

A run's wall time and CPU time (user and system seconds of pytest and every role process it reaped)
are printed too, and kept beside the results file (``smoke.json`` -> ``smoke.times.json``), so that a
``--baseline`` or ``--results`` file shows them again: a change that saves wall time by spending system
time (an idle busy-polling thread) shows here.

Exit status: 0 when every target of the profiles run is met, 1 when one is not, 2 when a run failed to
produce results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kvtest.results.metrics import PHASES  # noqa: E402
from kvtest.results.results import OTHER, ResultsError, TestEntry, load_results, phase_totals  # noqa: E402

#: issue 27's targets: outside/inside per profile, and the nightly run's wall seconds
RATIO_TARGETS = {"smoke": 4.0, "nightly": 3.0}
NIGHTLY_WALL_TARGET_S = 180.0
#: the seconds in transfers issue 27 measured when it set the ratios (smoke 1.6 s, nightly 14.70 s). Faster
#: transfers shrink the ratio's denominator: the NIXL busy-poll fix and the agent reuse made the sim's
#: transfers about 4x faster, so the same harness reads as a higher ratio. The budget lines print the
#: outside time against these fixed figures too; they are shown beside the targets, not instead of them.
ISSUE_INSIDE_S = {"smoke": 1.6, "nightly": 14.70}


@dataclass
class ProfileCost:
    """One profile's run: phases (role-seconds), the harness ratio and the run's wall time."""

    profile: str
    phases: dict[str, float]
    inside_s: float
    outside_s: float
    timed_tests: int
    tests: int
    outcomes: dict[str, int]
    wall_s: float | None  # None when read from a results file, not run here
    #: every test's wall time (its longest role), summed: what the run spent inside tests
    tests_wall_s: float = 0.0
    #: CPU seconds of the run, every role process included (None when unknown)
    user_s: float | None = None
    sys_s: float | None = None

    @property
    def ratio(self) -> float:
        return self.outside_s / self.inside_s if self.inside_s > 0 else float("inf")


def cost_of_tests(profile: str, tests: dict[str, TestEntry], wall_s: float | None) -> ProfileCost:
    """The summary's harness cost (tests with transfers only) and every test's phases."""
    timed = [e["cost"] for e in tests.values() if e["summary"]]
    outcomes: dict[str, int] = {}
    for entry in tests.values():
        outcomes[entry["outcome"]] = outcomes.get(entry["outcome"], 0) + 1
    return ProfileCost(
        profile=profile,
        phases=phase_totals(tests.values()),
        inside_s=sum(c["transfer_s"] for c in timed),
        outside_s=sum(c["other_s"] for c in timed),
        timed_tests=len(timed),
        tests=len(tests),
        outcomes=outcomes,
        wall_s=wall_s,
        tests_wall_s=sum(e["cost"]["wall_s"] for e in tests.values()),
    )


@dataclass(frozen=True)
class RunTimes:
    """Wall and CPU seconds of one profile run; CPU counts the pytest process and every role it reaped."""

    wall_s: float
    user_s: float
    sys_s: float

    def save(self, results: Path) -> None:
        """Beside the results file (``smoke.json`` -> ``smoke.times.json``), for a later ``--baseline``."""
        times_file(results).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, results: Path) -> RunTimes | None:
        path = times_file(results)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return cls(float(data["wall_s"]), float(data["user_s"]), float(data["sys_s"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise SystemExit(f"cost.py: {path} is not a run-times file ({exc})") from None


def times_file(results: Path) -> Path:
    return results.with_name(results.stem + ".times.json")


def run_profile(profile: str, folder: Path, extra: list[str]) -> tuple[Path, RunTimes, int]:
    """Run ``pytest --kv-profile profile`` here; return the results file, its times and exit status."""
    results = folder / f"{profile}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--kv-profile", profile,
           f"--kv-results={results}", *extra]
    print(f"running: {' '.join(cmd[2:])}", flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times = RunTimes(time.perf_counter() - start, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime)
    if results.is_file():
        times.save(results)
    tail = [line for line in done.stdout.splitlines() if line.startswith("kvtest: harness cost")
            or line.startswith("kvtest: biggest phases") or " passed" in line or " failed" in line]
    for line in tail[-4:]:
        print(f"  {line}")
    if not results.is_file():  # say why: a usage error or a crash leaves no summary line to show
        for line in done.stdout.splitlines()[-12:]:
            print(f"  | {line}")
    return results, times, done.returncode


def _order(names: set[str]) -> list[str]:
    known = [*PHASES, OTHER]
    return [n for n in known if n in names] + sorted(names - set(known))


def phase_table(now: ProfileCost, before: ProfileCost | None) -> list[str]:
    """Seconds per phase (summed over roles), share of the whole, and the baseline's when given."""
    names = _order(set(now.phases) | (set(before.phases) if before else set()))
    whole = sum(now.phases.values()) or 1.0
    head = f"{'phase':<10} {'seconds':>9} {'share':>6}"
    if before is not None:
        head += f" {'before':>9} {'change':>8}"
    lines = [head, "-" * len(head)]
    for name in names:
        sec = now.phases.get(name, 0.0)
        line = f"{name:<10} {sec:>9.2f} {sec / whole:>6.0%}"
        if before is not None:
            old = before.phases.get(name, 0.0)
            change = f"{(sec - old) / old:+.0%}" if old > 0 else "new"
            line += f" {old:>9.2f} {change:>8}"
        lines.append(line)
    total = f"{'all':<10} {whole:>9.2f} {'':>6}"
    if before is not None:
        total += f" {sum(before.phases.values()):>9.2f}"
    lines.append(total)
    return lines


def _run_text(cost: ProfileCost) -> str:
    """``, run 52 s (user 32.8 s, sys 11.6 s; 14.2 s in no test)``: what is known of the run's wall and
    CPU time. "In no test" is the run less every test's wall time: start-up, collection, the roles
    joining, the end. Work moved out of the tests (touching memory before the first one) shows there,
    not in the outside/inside ratio."""
    if cost.wall_s is None:
        return ""
    between = f"{max(cost.wall_s - cost.tests_wall_s, 0.0):.1f} s in no test"
    cpu = f"user {cost.user_s:.1f} s, sys {cost.sys_s:.1f} s; " if cost.user_s is not None else ""
    return f", run {cost.wall_s:.0f} s ({cpu}{between})"


def summary_lines(cost: ProfileCost, before: ProfileCost | None) -> list[str]:
    outcomes = ", ".join(f"{n} {k}" for k, n in sorted(cost.outcomes.items()))
    lines = [
        f"{cost.profile}: {cost.tests} tests ({outcomes}){_run_text(cost)}; over the {cost.timed_tests} "
        f"with transfers: in transfers {cost.inside_s:.2f} s, outside {cost.outside_s:.2f} s ({cost.ratio:.1f}x)",
    ]
    if before is not None:
        lines.append(f"{cost.profile} before{_run_text(before)}: in transfers {before.inside_s:.2f} s, outside "
                     f"{before.outside_s:.2f} s ({before.ratio:.1f}x), {before.tests} tests")
    return lines


def targets(costs: dict[str, ProfileCost]) -> list[tuple[str, bool]]:
    out = []
    for profile, goal in RATIO_TARGETS.items():
        if profile in costs:
            ratio = costs[profile].ratio
            out.append((f"{profile} outside/inside {ratio:.1f}x <= {goal:g}x", ratio <= goal))
    nightly = costs.get("nightly")
    if nightly is not None and nightly.wall_s is not None:
        out.append((f"nightly run {nightly.wall_s:.0f} s <= {NIGHTLY_WALL_TARGET_S:.0f} s",
                    nightly.wall_s <= NIGHTLY_WALL_TARGET_S))
    return out


def budget_lines(costs: dict[str, ProfileCost]) -> list[str]:
    """The outside time against each ratio target times the transfer time the issue measured."""
    out = []
    for profile, goal in RATIO_TARGETS.items():
        cost = costs.get(profile)
        if cost is None or profile not in ISSUE_INSIDE_S:
            continue
        budget = goal * ISSUE_INSIDE_S[profile]
        per_test = cost.outside_s / cost.timed_tests * 1000 if cost.timed_tests else 0.0
        out.append(f"{profile} outside {cost.outside_s:.2f} s ({per_test:.0f} ms a test with transfers) against "
                   f"{goal:g}x the {ISSUE_INSIDE_S[profile]:g} s in transfers the issue measured "
                   f"({budget:.1f} s): {'within' if cost.outside_s <= budget else 'over'} (not a target)")
    return out


def _pairs(values: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for value in values:
        profile, sep, path = value.partition("=")
        if not sep or not path:
            raise SystemExit(f"cost.py: {flag} {value!r} must be PROFILE=PATH (e.g. nightly=results.json)")
        out[profile] = Path(path)
    return out


def _load(profile: str, path: Path, times: RunTimes | None) -> ProfileCost:
    """A profile's cost from its results file; the run's times from its times file when not given."""
    try:
        cost = cost_of_tests(profile, dict(load_results(path).tests), None)
    except ResultsError as exc:
        raise SystemExit(f"cost.py: {exc}") from None
    times = times or RunTimes.load(path)
    if times is not None:
        cost.wall_s, cost.user_s, cost.sys_s = times.wall_s, times.user_s, times.sys_s
    return cost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", default="smoke,nightly", help="profiles to run (comma-separated)")
    parser.add_argument("--results", action="append", default=[], metavar="PROFILE=PATH",
                        help="read this profile's figures from a results file instead of running it")
    parser.add_argument("--baseline", action="append", default=[], metavar="PROFILE=PATH",
                        help="a results file of an earlier run, for a before/after column")
    parser.add_argument("--keep", type=Path, help="keep the results files in this folder")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    given = _pairs(args.results, "--results")
    baseline = {p: _load(p, path, None) for p, path in _pairs(args.baseline, "--baseline").items()}
    profiles = [p for p in args.profiles.split(",") if p] if not given else list(given)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="kvtest-cost-"))
    folder.mkdir(parents=True, exist_ok=True)
    costs: dict[str, ProfileCost] = {}
    for profile in profiles:
        if profile in given:
            costs[profile] = _load(profile, given[profile], None)
            continue
        path, times, status = run_profile(profile, folder, args.pytest_args)
        if not path.is_file():
            print(f"cost.py: the {profile} run (exit {status}) wrote no results file {path}", file=sys.stderr)
            return 2
        costs[profile] = _load(profile, path, times)
    for profile, cost in costs.items():
        print()
        print(f"== {profile}: seconds by phase, summed over every role of every test")
        for line in phase_table(cost, baseline.get(profile)):
            print(line)
        for line in summary_lines(cost, baseline.get(profile)):
            print(line)
    print()
    results = targets(costs)
    for text, met in results:
        print(f"target {'met' if met else 'NOT met'}: {text}")
    for line in budget_lines(costs):
        print(line)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load is not None:
        print(f"load average now {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    if args.keep:
        print(f"results files in {folder}")
    return 0 if all(met for _, met in results) else 1


if __name__ == "__main__":
    sys.exit(main())
