"""Terminal-summary lines for the plugin's ``pytest_terminal_summary``: one line per test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from kvtest.results.metrics import ApiSummary
from kvtest.results.results import TestEntry

__all__ = ["format_bytes", "role_text", "summary_lines", "sweep_table", "write_summary"]


def format_bytes(n: int) -> str:
    """Binary units, as KV cache sizes are usually powers of two: ``64.0 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def role_text(name: str, outcome: str, step: str | None) -> str:
    """``d0 failed at 'push'``, or ``p0 passed``."""
    return f"{name} {outcome}" + (f" at {step!r}" if step and outcome != "passed" else "")


def _label(entry: TestEntry) -> str:
    """The outcome as pytest words it: a test that hit a known upstream issue is XFAIL."""
    known = entry.get("known_issue")
    if known is not None and known["state"] == "hit":
        return f"XFAIL({known['id']})"
    return entry["outcome"].upper()


def summary_lines(tests: Mapping[str, TestEntry]) -> list[str]:
    """One line per test: outcome, node id, each role's outcome, bytes moved and GB/s per API.

    ``tests`` is :attr:`kvtest.results.results.Results.tests` (or the writer's ``tests``), in run order.
    """
    if not tests:
        return []
    width = max(len(_label(e)) for e in tests.values())
    lines = []
    for nodeid, entry in tests.items():
        roles = ", ".join(role_text(name, r["outcome"], r["step"]) for name, r in entry["roles"].items())
        summary = entry["summary"]
        if summary:
            moved = format_bytes(sum(s["bytes"] for s in summary.values()))
            rates = ", ".join(f"{api} {s['gbps']:.2f} GB/s" for api, s in summary.items())
            transfer = f"{moved}  {rates}"
        else:
            transfer = "no transfers timed"
        parts = [_label(entry).ljust(width), nodeid, roles or "no roles", transfer]
        lines.append("  ".join(parts))
    return lines


def sweep_table(rows: Sequence[tuple[str, int, int, ApiSummary]]) -> list[str]:
    """A bandwidth-sweep table in the style of nixlbench: (api, block bytes, count, summary) rows."""
    head = (
        f"{'api':<12} {'block size':>10} {'count':>6} {'total':>10} {'GB/s':>8} {'p50 ms':>9} {'p99 ms':>9}"
    )
    lines = [head, "-" * len(head)]
    for api, block, count, s in rows:
        p50 = f"{s['p50_ms']:.3f}" if s.get("p50_ms") is not None else "-"
        p99 = f"{s['p99_ms']:.3f}" if s.get("p99_ms") is not None else "-"
        lines.append(
            f"{api:<12} {format_bytes(block):>10} {count:>6} {format_bytes(block * count):>10} "
            f"{s['gbps']:>8.2f} {p50:>9} {p99:>9}"
        )
    return lines


class _SweepPoint(Protocol):
    api: str
    block_bytes: int
    count: int


def write_summary(
    reporter: Any, tests: Mapping[str, TestEntry], points: Mapping[str, object], path: Path | None
) -> None:
    """p0's end-of-run section: a line per test, the sweep table when the run swept, the results file.

    ``points`` maps a node id to its ``point`` parameter (a :class:`kvtest.cases.SweepPoint` for sweep
    tests).
    """
    reporter.write_sep("-", "kvtest: every role, bytes and GB/s")
    for line in summary_lines(tests):
        reporter.write_line(line)
    rows = []
    for nodeid, entry in tests.items():
        point = points.get(nodeid)
        if all(hasattr(point, a) for a in ("api", "block_bytes", "count")):
            sweep: _SweepPoint = point  # type: ignore[assignment]
            if sweep.api in entry["summary"]:
                rows.append((sweep.api, sweep.block_bytes, sweep.count, entry["summary"][sweep.api]))
    if rows:
        reporter.write_sep("-", "kvtest: bandwidth sweep")
        for line in sweep_table(rows):
            reporter.write_line(line)
    if path is not None:
        reporter.write_line(f"kvtest: results written to {path}")
