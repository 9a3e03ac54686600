"""``kvtest compare BASELINE CURRENT``: gate a stack upgrade (e.g. CANN) on two ``--kv-results`` files.

A regression is a test that passed in the baseline and now fails, errors, is skipped or is missing,
or a test that passed in both whose GB/s for some API dropped by more than ``--max-drop``.
Exit status: 0 no regression, 1 at least one, 2 a usage problem (unreadable file, bad option).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kvtest.results.results import Results, ResultsError, load_results

__all__ = [
    "HELP",
    "IMPORTANT_KEYS",
    "Row",
    "add_arguments",
    "compare_results",
    "fingerprint_lines",
    "format_table",
    "parse_max_drop",
    "run",
]

HELP = ("Compare two --kv-results files (BASELINE, CURRENT): print fingerprint differences and a "
        "per-test table; exit 1 when a test that passed now fails, is skipped or missing, or its "
        "GB/s dropped by more than --max-drop; exit 2 on an unusable file or option.")

#: fingerprint keys always shown, in this order, even when they did not change
IMPORTANT_KEYS = ("backend", "cann", "llm_datadist", "driver", "firmware", "torch", "torch_npu", "nixl")

_ABSENT = "(absent)"


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", metavar="BASELINE", help="results file of the accepted run")
    parser.add_argument("current", metavar="CURRENT", help="results file of the run under test")
    parser.add_argument("--max-drop", default="10%", metavar="PCT",
                        help="largest allowed GB/s drop per test and API: 10%%, 10 or 0.1 "
                             "(default: %(default)s)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also draw baseline vs current GB/s per test into this PNG (needs matplotlib)")


@dataclass(frozen=True)
class Row:
    """One line of the comparison: a test, or one API of a test that timed transfers.

    ``verdict`` is upper case exactly when the row is a regression.
    """

    test: str
    api: str | None
    baseline: str | None
    current: str | None
    baseline_gbps: float | None
    current_gbps: float | None
    verdict: str

    @property
    def regression(self) -> bool:
        return self.verdict.isupper()

    @property
    def change(self) -> float | None:
        """Relative GB/s change (-0.2 is a 20 % drop), when both sides have a positive figure."""
        if self.baseline_gbps is None or self.current_gbps is None or self.baseline_gbps <= 0:
            return None
        return self.current_gbps / self.baseline_gbps - 1

    @property
    def label(self) -> str:
        return self.test if self.api is None else f"{self.test} [{self.api}]"


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


def compare_results(baseline: Results, current: Results, max_drop: float) -> list[Row]:
    """Rows for every test in either file, baseline order first, then tests new in current."""
    rows: list[Row] = []
    for test in [*baseline.tests, *(t for t in current.tests if t not in baseline.tests)]:
        b = baseline.tests.get(test)
        c = current.tests.get(test)
        b_sum = b["summary"] if b else {}
        c_sum = c["summary"] if c else {}
        b_out = b["outcome"] if b else None
        c_out = c["outcome"] if c else None
        by_outcome = _outcome_verdict(b_out, c_out)
        apis: list[str | None] = [*b_sum, *(a for a in c_sum if a not in b_sum)] or [None]
        for api in apis:
            b_gbps = b_sum[api]["gbps"] if api in b_sum else None
            c_gbps = c_sum[api]["gbps"] if api in c_sum else None
            verdict = by_outcome
            if verdict is None:
                if b_gbps is None or c_gbps is None:
                    verdict = "ok" if api is None else ("new api" if b_gbps is None else "no data")
                elif b_gbps > 0 and (b_gbps - c_gbps) / b_gbps > max_drop:
                    verdict = "DROP"
                else:
                    verdict = "ok"
            rows.append(Row(test=test, api=api, baseline=b_out, current=c_out,
                            baseline_gbps=b_gbps, current_gbps=c_gbps, verdict=verdict))
    return rows


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


def format_table(rows: Sequence[Row]) -> list[str]:
    """The comparison as aligned text lines, header first."""
    table = [("TEST", "API", "OUTCOME", "GB/S", "CHANGE", "VERDICT")]
    for r in rows:
        change = r.change
        table.append((
            r.test,
            r.api or "-",
            f"{r.baseline or '-'} -> {r.current or '-'}",
            f"{_gbps(r.baseline_gbps)} -> {_gbps(r.current_gbps)}",
            "-" if change is None else f"{change * 100:+.1f}%",
            r.verdict,
        ))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]


def _describe(label: str, results: Results) -> str:
    return (f"{label}{results.path} (run {results.run_id}, {results.created}, "
            f"kvtest {results.kvtest_version}, {len(results.tests)} tests)")


def _error(message: str) -> int:
    print(f"kvtest compare: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Entry point of ``kvtest compare``; prints the report on stdout and returns the exit status."""
    try:
        max_drop = parse_max_drop(args.max_drop)
    except ValueError as exc:
        return _error(str(exc))
    if args.plot:
        from kvtest.results import chart

        try:
            chart.require()
        except chart.ChartUnavailable as exc:
            return _error(str(exc))
    try:
        baseline = load_results(args.baseline)
        current = load_results(args.current)
    except ResultsError as exc:
        return _error(str(exc))

    rows = compare_results(baseline, current, max_drop)
    out = [_describe("baseline: ", baseline), _describe("current:  ", current), "fingerprint:",
           *fingerprint_lines(baseline, current), f"max drop: {max_drop * 100:g}%", "",
           *format_table(rows), ""]
    out += known_issue_lines(baseline, current)
    regressions = [r for r in rows if r.regression]
    if regressions:
        named = ", ".join(f"{r.verdict} {r.label}" for r in regressions)
        out.append(f"result: {len(regressions)} regression(s): {named}")
    else:
        out.append(f"result: no regression ({len(rows)} rows compared)")
    if args.plot:
        from kvtest.results import chart

        try:
            chart.plot(rows, args.plot, title=_title(baseline, current))
        except OSError as exc:
            print("\n".join(out))
            return _error(f"cannot write {args.plot}: {exc.strerror or exc}")
        out.append(f"chart: {args.plot}")
    print("\n".join(out))
    return 1 if regressions else 0


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
