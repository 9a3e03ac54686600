"""``kvtest compare BASELINE... CURRENT``: gate a stack upgrade (e.g. CANN) on ``--kv-results`` files.

A regression is a test that passed in the baseline and now fails, errors, is skipped or is missing,
or a test that passed in both where some API's bandwidth dropped by more than ``--max-drop`` *and* the
drop is significant: a two-sided Mann-Whitney U test of the per-transfer GB/s samples (as Google
Benchmark's ``compare.py`` and asv do) gives p below ``--alpha``, and, with several baseline runs, the
drop is also beyond the run-to-run noise band those runs show. Only gateable figures (enough samples
of enough bytes and time, :func:`kvtest.results.metrics.gate_note`) are gated; the rest are compared
for outcome only and marked ``too small to gate``.

A test that failed in CURRENT because of the environment (its ``failure`` is ``environment``: a peer
never joined, the rendezvous was lost, a host check failed; see :mod:`kvtest.run.failure`) is never a
regression: its rows say ``environment`` and it is listed apart, with its cause. A baseline run where
a test failed because of the environment is passed over for that test's baseline outcome.

Exit status: 0 no regression and no environment failure, 1 at least one regression (whatever else),
2 a usage problem (unreadable file, bad option), 3 no regression but environment failures (the run
tested too little to vouch for the product: fix the environment and run again).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvtest.results.metrics import (
    GATE_MAX_SPREAD,
    GATE_MIN_BYTES,
    GATE_MIN_SAMPLES,
    GATE_MIN_SECONDS,
    TOO_SMALL,
    TransferRecord,
    gate_note,
    sample_gbps,
)
from kvtest.results.results import Results, ResultsError, TestEntry, load_results, transfer_records
from kvtest.results.stats import mann_whitney_u, median

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_HISTORY",
    "DROP",
    "ENVIRONMENT",
    "EXIT_ENVIRONMENT",
    "FASTER",
    "IN_BAND",
    "NOT_SIGNIFICANT",
    "HELP",
    "IMPORTANT_KEYS",
    "Decision",
    "Row",
    "add_arguments",
    "compare_results",
    "decide",
    "environment_lines",
    "fingerprint_lines",
    "format_p",
    "format_table",
    "load_baselines",
    "parse_alpha",
    "parse_history",
    "parse_max_drop",
    "run",
]

HELP = ("Compare --kv-results files: BASELINE (one or more files, or a folder of accepted runs) against "
        "CURRENT. Print fingerprint differences and a per-test table; exit 1 when a test that passed "
        "now fails, is skipped or missing, or its GB/s dropped by more than --max-drop and the drop is "
        "significant (Mann-Whitney U, --alpha) and beyond the baseline runs' noise band; exit 2 on an "
        "unusable file or option; exit 3 when the only problems are environment failures (a peer "
        "never joined, the rendezvous was lost, a host check failed), listed apart, never regressions.")

#: fingerprint keys always shown, in this order, even when they did not change
IMPORTANT_KEYS = ("backend", "cann", "llm_datadist", "driver", "firmware", "torch", "torch_npu", "nixl")
DEFAULT_ALPHA = 0.05
#: how many of the newest results files a baseline folder contributes
DEFAULT_HISTORY = 5

_ABSENT = "(absent)"
DROP = "DROP"
FASTER = "faster"
NOT_SIGNIFICANT = "not significant"
IN_BAND = "within noise band"
#: the verdict of a test that failed because of the environment (lower case: never a regression)
ENVIRONMENT = "environment"
#: ``kvtest compare``'s exit status when environment failures are the only problem
EXIT_ENVIRONMENT = 3


def parse_max_drop(text: str) -> float:
    """The allowed bandwidth drop as a fraction in [0, 1].

    ``"10%"`` and ``"10"`` mean 10 percent; a bare number up to 1 is a fraction (``"0.1"``); so
    ``"1"`` means 100 percent, and the effective threshold is printed with every comparison.

    :raises ValueError: with a message naming the value and what is accepted.
    """
    raw = text.strip()
    percent = raw.endswith("%")
    try:
        value = float(raw[:-1] if percent else raw)
    except ValueError:
        raise ValueError(f"--max-drop {text!r} is not a number; use e.g. 10%, 10 or 0.1") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"--max-drop {text!r} must be between 0% and 100%")
    fraction = value / 100 if percent or value > 1 else value
    if fraction > 1:
        raise ValueError(f"--max-drop {text!r} must be between 0% and 100%")
    return fraction


def parse_alpha(text: str) -> float:
    """The significance level: a number strictly between 0 and 1 (``0.05``)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:  # also refuses nan
        raise ValueError(f"--alpha {text!r} must be a number between 0 and 1 (exclusive), e.g. 0.05")
    return value


def parse_history(text: str) -> int:
    """How many results files a baseline folder contributes: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--history {text!r} must be a whole number of runs >= 1, e.g. 5")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", metavar="BASELINE", nargs="+",
                        help="results file(s) of accepted runs, or a folder of them (its newest "
                             "--history *.json files)")
    parser.add_argument("current", metavar="CURRENT", help="results file of the run under test")
    parser.add_argument("--max-drop", default="10%", metavar="PCT",
                        help="largest allowed GB/s drop per test and API: 10%%, 10 or 0.1 "
                             "(default: %(default)s)")
    parser.add_argument("--alpha", default=str(DEFAULT_ALPHA), metavar="P",
                        help="significance level of the Mann-Whitney U test (default: %(default)s)")
    parser.add_argument("--history", default=str(DEFAULT_HISTORY), metavar="N",
                        help="a BASELINE folder contributes its newest N results files "
                             "(default: %(default)s)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw baseline vs current GB/s per test into this PNG (needs matplotlib)")


@dataclass(frozen=True)
class Decision:
    """The bandwidth verdict of one gateable row and the figures behind it.

    ``change`` compares medians (-0.2 is a 20 % drop); ``band`` is the history's noise band: the
    lowest and highest baseline run median relative to the pooled baseline median (None for one run).
    """

    verdict: str
    change: float
    p_value: float
    band: tuple[float, float] | None


def decide(history: Sequence[Sequence[float]], current: Sequence[float], max_drop: float,
           alpha: float) -> Decision:
    """Decide on GB/s samples: ``history`` holds one sample list per baseline run.

    A drop is a ``DROP`` (a regression) only when all three hold: the current median is more than
    ``max_drop`` below the pooled baseline median, beyond the lowest baseline run's median by that
    much as well (the noise band), and the U test's p is below ``alpha``. A rise is ``faster`` by the
    mirror rule. Otherwise ``ok``, ``not significant`` or ``within noise band``.
    """
    pooled = [v for run in history for v in run]
    base = median(pooled)
    change = median(current) / base - 1 if base > 0 else 0.0
    _, p = mann_whitney_u(pooled, current)
    band = None
    if len(history) > 1 and base > 0:
        run_medians = [median(run) for run in history]
        band = (min(run_medians) / base - 1, max(run_medians) / base - 1)
    low, high = band or (0.0, 0.0)
    if change >= -max_drop and change <= max_drop:
        verdict = "ok"
    elif p >= alpha:
        verdict = NOT_SIGNIFICANT
    elif change < low - max_drop:
        verdict = DROP
    elif change > high + max_drop:
        verdict = FASTER
    else:
        verdict = IN_BAND
    return Decision(verdict=verdict, change=change, p_value=p, band=band)


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a test, or one API of a test that timed transfers.

    ``verdict`` is upper case exactly when the row is a regression. ``baseline_gbps`` and
    ``current_gbps`` are medians of the samples for a gated row, else the summary figures.
    """

    test: str
    api: str | None
    baseline: str | None
    current: str | None
    baseline_gbps: float | None
    current_gbps: float | None
    verdict: str
    #: U test p-value, baseline and current sample counts, history band: for gated rows only
    p_value: float | None = None
    samples: tuple[int, int] | None = None
    band: tuple[float, float] | None = None
    #: why a row was not gated (``too small to gate: 1 sample (needs 5)``)
    note: str | None = None
    #: for an ``environment`` row: the current run's cause (``d0 never joined within 120s at ...``)
    cause: str | None = None

    @property
    def regression(self) -> bool:
        return self.verdict.isupper()

    @property
    def gated(self) -> bool:
        return self.p_value is not None

    @property
    def change(self) -> float | None:
        """Relative GB/s change (-0.2 is a 20 % drop), when both sides have a positive figure."""
        if self.baseline_gbps is None or self.current_gbps is None or self.baseline_gbps <= 0:
            return None
        return self.current_gbps / self.baseline_gbps - 1

    @property
    def label(self) -> str:
        return self.test if self.api is None else f"{self.test} [{self.api}]"

    @property
    def figures(self) -> str:
        """``-33.1%, p=0.00018`` for a gated row with a change, else empty."""
        change = self.change
        if change is None or self.p_value is None:
            return ""
        return f"{change * 100:+.1f}%, {format_p(self.p_value)}"


def format_p(p: float) -> str:
    """``p=0.0079``, ``p=1.1e-05``: two significant digits."""
    return f"p={p:.2g}"


def _outcome_verdict(base: str | None, cur: str | None) -> str | None:
    """The verdict decided by outcomes alone; None when both passed (bandwidth decides)."""
    if base == "passed":
        if cur is None:
            return "MISSING"
        if cur != "passed":
            return cur.upper()
        return None
    if base is None:
        return "new"
    if cur is None:
        return "missing"
    if cur == "passed":
        return "fixed"
    return f"still {cur}" if cur == base else cur


def _records(results: Results, test: str, api: str) -> list[TransferRecord]:
    entry = results.tests.get(test)
    return [r for r in transfer_records(entry) if r.api == api] if entry else []


def _bandwidth_row(test: str, api: str, outcome: str, history: Sequence[Results], current: Results,
                   max_drop: float, alpha: float) -> Row:
    """The row of an API of a test that passed in the newest baseline run and now."""
    cur = _records(current, test, api)
    newest = next(r for r in history if test in r.tests)
    b_sum, c_sum = newest.tests[test]["summary"].get(api), current.tests[test]["summary"].get(api)
    b_gbps = b_sum["gbps"] if b_sum else None
    c_gbps = c_sum["gbps"] if c_sum else None
    if b_sum is None or c_sum is None:
        verdict = "new api" if b_sum is None else "no data"
        return Row(test, api, outcome, outcome, b_gbps, c_gbps, verdict)
    # every baseline run where the test passed with gateable samples adds its samples to the history
    runs = [_records(r, test, api) for r in history
            if test in r.tests and r.tests[test]["outcome"] == "passed"]
    gateable = [run for run in runs if run and gate_note(run) is None]
    why = gate_note(cur) or (None if gateable else (gate_note(runs[0]) if runs else None))
    if why is not None or not gateable:
        note = why or f"{TOO_SMALL}: no baseline run with gateable samples"
        return Row(test, api, outcome, outcome, b_gbps, c_gbps, note.split(":")[0], note=note)
    samples = [sample_gbps(run) for run in gateable]
    current_samples = sample_gbps(cur)
    decision = decide(samples, current_samples, max_drop, alpha)
    return Row(test, api, outcome, outcome, median([v for run in samples for v in run]),
               median(current_samples), decision.verdict, p_value=decision.p_value,
               samples=(sum(len(s) for s in samples), len(current_samples)), band=decision.band)


def compare_results(baseline: Results | Sequence[Results], current: Results, max_drop: float,
                    alpha: float = DEFAULT_ALPHA) -> list[Row]:
    """Rows for every test in either side, baseline order first, then tests new in current.

    ``baseline`` is one run or several, newest first: a test's baseline outcome is the one in the
    newest run that has it; the bandwidth history pools every baseline run where it passed.
    """
    history = [baseline] if isinstance(baseline, Results) else list(baseline)
    if not history:
        raise ValueError("compare_results needs at least one baseline run")
    order: dict[str, None] = {}
    for results in [*history, current]:
        order.update(dict.fromkeys(results.tests))
    rows: list[Row] = []
    for test in order:
        # the newest baseline outcome that says something about the product
        b = next((r.tests[test] for r in history if test in r.tests and not _environment(r.tests[test])),
                 None) or next((r.tests[test] for r in history if test in r.tests), None)
        c = current.tests.get(test)
        b_sum = b["summary"] if b else {}
        c_sum = c["summary"] if c else {}
        b_out = b["outcome"] if b else None
        c_out = c["outcome"] if c else None
        by_outcome = _outcome_verdict(b_out, c_out)
        cause = None
        if c is not None and _environment(c):
            by_outcome, cause = ENVIRONMENT, c.get("failure_cause") or "no cause recorded"
        apis: list[str | None] = [*b_sum, *(a for a in c_sum if a not in b_sum)] or [None]
        for api in apis:
            if by_outcome is None and b_out is not None and api is not None:
                rows.append(_bandwidth_row(test, api, b_out, history, current, max_drop, alpha))
                continue
            rows.append(Row(test=test, api=api, baseline=b_out, current=c_out,
                            baseline_gbps=b_sum[api]["gbps"] if api in b_sum else None,
                            current_gbps=c_sum[api]["gbps"] if api in c_sum else None,
                            verdict=by_outcome or "ok", cause=cause))
    return rows


def _environment(entry: TestEntry) -> bool:
    return entry["outcome"] in ("failed", "error") and entry.get("failure") == ENVIRONMENT


def environment_lines(rows: Sequence[Row]) -> list[str]:
    """The section of tests that failed because of the environment: one line each, with its cause."""
    causes = {r.test: r.cause or "" for r in rows if r.verdict == ENVIRONMENT}
    if not causes:
        return []
    return [f"environment failures (not regressions, not gated): {len(causes)}",
            *(f"  {test}: {cause}" for test, cause in causes.items()), ""]


def fingerprint_lines(baseline: Results, current: Results) -> list[str]:
    """``key: old -> new`` for every changed key, then ``key: value`` for unchanged important keys."""
    b, c = baseline.fingerprint, current.fingerprint
    order = [*IMPORTANT_KEYS, *sorted((set(b) | set(c)) - set(IMPORTANT_KEYS))]
    changed = [k for k in order if b.get(k) != c.get(k)]
    lines = [f"  {k}: {b.get(k, _ABSENT)} -> {c.get(k, _ABSENT)}" for k in changed]
    lines += [f"  {k}: {b[k]} (unchanged)" for k in IMPORTANT_KEYS if k in b and b.get(k) == c.get(k)]
    return lines or ["  (no fingerprint)"]


def _gbps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _band(band: tuple[float, float] | None) -> str:
    return "-" if band is None else f"{band[0] * 100:+.0f}%..{band[1] * 100:+.0f}%"


def format_table(rows: Sequence[Row]) -> list[str]:
    """The comparison as aligned text lines, header first; a BAND column only with a history band."""
    with_band = any(r.band is not None for r in rows)
    head = ("TEST", "API", "OUTCOME", "GB/S", "CHANGE", "P", "SAMPLES", *(("BAND",) if with_band else ()),
            "VERDICT")
    table = [head]
    for r in rows:
        change = r.change
        table.append((
            r.test,
            r.api or "-",
            f"{r.baseline or '-'} -> {r.current or '-'}",
            f"{_gbps(r.baseline_gbps)} -> {_gbps(r.current_gbps)}",
            "-" if change is None else f"{change * 100:+.1f}%",
            "-" if r.p_value is None else format_p(r.p_value),
            "-" if r.samples is None else f"{r.samples[0]}/{r.samples[1]}",
            *((_band(r.band),) if with_band else ()),
            r.verdict,
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]


def _describe(label: str, results: Results) -> str:
    return (f"{label}{results.path} (run {results.run_id}, {results.created}, "
            f"kvtest {results.kvtest_version}, {len(results.tests)} tests)")


def _error(message: str) -> int:
    print(f"kvtest compare: error: {message}", file=sys.stderr)
    return 2


def load_baselines(paths: Sequence[str], *, history: int, exclude: str | None = None) -> list[Results]:
    """The baseline runs, newest first: each path is a results file or a folder, of which the newest
    ``history`` ``*.json`` files count. ``exclude`` (the current file) is never its own baseline.

    :raises ResultsError: an unusable file (named), or a folder without results files.
    """
    skip = Path(exclude).resolve() if exclude else None
    runs: list[Results] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.glob("*.json") if p.is_file() and p.resolve() != skip)
            if not files:
                raise ResultsError(f"{path}: a baseline folder with no results files (*.json)")
            found = sorted((load_results(p) for p in files), key=lambda r: r.created, reverse=True)
            runs += found[:history]
        else:
            runs.append(load_results(path))
    return sorted(runs, key=lambda r: r.created, reverse=True)


def _gate_line(alpha: float, runs: int) -> str:
    return (f"significance: two-sided Mann-Whitney U test of per-transfer GB/s, alpha {alpha:g}; "
            f"gated when >= {GATE_MIN_SAMPLES} samples of >= {GATE_MIN_BYTES >> 20} MiB and "
            f">= {GATE_MIN_SECONDS * 1e3:g} ms, spread (IQR) <= {GATE_MAX_SPREAD * 100:g}% of the median; "
            f"history: {runs} baseline run{'s' if runs > 1 else ''}")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kvtest compare``; prints the report on stdout and returns the exit status."""
    try:
        max_drop = parse_max_drop(args.max_drop)
        alpha = parse_alpha(args.alpha)
        history = parse_history(args.history)
    except ValueError as exc:
        return _error(str(exc))
    if args.plot:
        from kvtest.results import chart

        try:
            chart.require()
        except chart.ChartUnavailable as exc:
            return _error(str(exc))
    try:
        baselines = load_baselines(args.baseline, history=history, exclude=args.current)
        current = load_results(args.current)
    except ResultsError as exc:
        return _error(str(exc))

    rows = compare_results(baselines, current, max_drop, alpha)
    out = [*(_describe("baseline: ", b) for b in baselines), _describe("current:  ", current),
           "fingerprint:", *fingerprint_lines(baselines[0], current), f"max drop: {max_drop * 100:g}%",
           _gate_line(alpha, len(baselines)), "", *format_table(rows), ""]
    out += known_issue_lines(baselines[0], current)
    out += environment_lines(rows)
    faster = [r for r in rows if r.verdict == FASTER]
    if faster:
        out.append(f"improvements: {len(faster)}: " + ", ".join(f"{r.label} ({r.figures})" for r in faster))
    regressions = [r for r in rows if r.regression]
    if regressions:
        named = ", ".join(f"{r.verdict} {r.label}" + (f" ({r.figures})" if r.figures else "")
                          for r in regressions)
        out.append(f"result: {len(regressions)} regression(s): {named}")
    else:
        out.append(f"result: no regression ({len(rows)} rows compared)")
    environment = len({r.test for r in rows if r.verdict == ENVIRONMENT})
    if environment and not regressions:
        out.append(f"result: {environment} test(s) failed because of the environment, not compared: "
                   f"fix the environment and run again (exit {EXIT_ENVIRONMENT})")
    if args.plot:
        from kvtest.results import chart

        try:
            chart.plot(rows, args.plot, title=_title(baselines[0], current))
        except OSError as exc:
            print("\n".join(out))
            return _error(f"cannot write {args.plot}: {exc.strerror or exc}")
        out.append(f"chart: {args.plot}")
    print("\n".join(out))
    return 1 if regressions else EXIT_ENVIRONMENT if environment else 0


def known_issue_lines(baseline: Results, current: Results) -> list[str]:
    """The known upstream issues that appeared or went away (kvtest.known_issues); informational."""
    from kvtest.results.known_issues import issue_changes

    changes = issue_changes(baseline.tests, current.tests)
    return ["known issues:", *(f"  {line}" for line in changes), ""] if changes else []


def _title(baseline: Results, current: Results) -> str:
    b, c = baseline.fingerprint, current.fingerprint
    changed = [f"{k} {b.get(k, _ABSENT)} -> {c.get(k, _ABSENT)}" for k in IMPORTANT_KEYS
               if b.get(k) != c.get(k)]
    return "GB/s, baseline vs current" + (f" ({'; '.join(changed)})" if changed else "")
