"""Terminal-summary lines for the plugin's ``pytest_terminal_summary``: a line per test, the harness cost."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from kvtest.results.metrics import ApiSummary
from kvtest.results.results import Cost, TestEntry, phase_totals

__all__ = [
    "api_text",
    "cost_line",
    "cost_text",
    "environment_lines",
    "format_bytes",
    "phase_line",
    "role_text",
    "summary_lines",
    "sweep_table",
    "write_summary",
]


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


#: below this many bytes per call a transfer's latency says more than its GB/s
LATENCY_BELOW = 1 << 20


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value >= 0.1 else f"{value:.3f} ms"


def api_text(api: str, s: ApiSummary) -> str:
    """One API of a test: GB/s for large transfers, latency for small ones, p50/p99 when repeated.

    ``pull_blocks 2.80 GB/s``, ``push_blocks 160 B 0.31 ms``,
    ``pull_blocks 2.80 GB/s (4 calls, p50 3.00 ms, p99 3.98 ms)``,
    ``push_blocks 2.5 KiB in 16 calls (p50 0.31 ms, p99 0.52 ms)``.
    """
    count = max(1, s["count"])
    repeats = ""
    if count > 1 and s.get("p50_ms") is not None and s.get("p99_ms") is not None:
        repeats = f"p50 {_ms(float(s['p50_ms'] or 0))}, p99 {_ms(float(s['p99_ms'] or 0))}"
    if s["bytes"] / count >= LATENCY_BELOW:
        return f"{api} {s['gbps']:.2f} GB/s" + (f" ({count} calls, {repeats})" if repeats else "")
    if repeats:
        return f"{api} {format_bytes(s['bytes'])} in {count} calls ({repeats})"
    return f"{api} {format_bytes(s['bytes'])} {_ms(s['seconds'] * 1e3 / count)}"


def cost_text(cost: Cost) -> str:
    """``in transfers 0.28 s, outside 2.90 s (10x)``: what the harness costs beside the transfer."""
    text = f"in transfers {cost['transfer_s']:.2f} s, outside {cost['other_s']:.2f} s"
    if cost["transfer_s"] > 0:
        text += f" ({cost['other_s'] / cost['transfer_s']:.0f}x)"
    return text


def summary_lines(tests: Mapping[str, TestEntry]) -> list[str]:
    """One line per test: outcome, node id, each role's outcome, bytes moved, GB/s or latency per API,
    and the time inside transfer calls beside the rest.

    ``tests`` is :attr:`kvtest.results.results.Results.tests` (or the writer's ``tests``), in run order.
    """
    if not tests:
        return []
    width = max(len(_label(e)) for e in tests.values())
    lines = []
    for nodeid, entry in tests.items():
        roles = ", ".join(role_text(name, r["outcome"], r["step"]) for name, r in entry["roles"].items())
        summary = entry["summary"]
        parts = [_label(entry).ljust(width), nodeid, roles or "no roles"]
        if summary:
            parts.append(format_bytes(sum(s["bytes"] for s in summary.values())))
            parts.append(", ".join(api_text(api, s) for api, s in summary.items()))
            cost = entry.get("cost")
            if cost is not None:
                parts.append(cost_text(cost))
        else:
            parts.append("no transfers timed")
        if entry.get("failure") == "environment":
            parts.append("(environment)")
        lines.append("  ".join(parts))
    return lines


def environment_lines(tests: Mapping[str, TestEntry]) -> list[str]:
    """The tests that failed because of the environment, not the product, counted apart and grouped
    by cause: ``kvtest: 3 environment failures (not the product): d0 never joined ... (3 tests)``."""
    causes: dict[str, int] = {}
    for entry in tests.values():
        if entry.get("failure") == "environment":
            cause = entry.get("failure_cause") or "no cause recorded"
            causes[cause] = causes.get(cause, 0) + 1
    if not causes:
        return []
    count = sum(causes.values())
    head = f"kvtest: {count} environment failure{'s' if count > 1 else ''} (not the product):"
    if len(causes) == 1:
        (cause, n), = causes.items()
        return [f"{head} {cause}" + (f" ({n} tests)" if n > 1 else "")]
    return [head, *(f"  {cause} ({n} test{'s' if n > 1 else ''})" for cause, n in causes.items())]


def cost_line(tests: Mapping[str, TestEntry]) -> str | None:
    """The run's harness cost over the tests that timed transfers; None when none did."""
    timed = [e["cost"] for e in tests.values() if e["summary"] and e.get("cost") is not None]
    if not timed:
        return None
    total = Cost(
        wall_s=sum(c["wall_s"] for c in timed),
        transfer_s=sum(c["transfer_s"] for c in timed),
        other_s=sum(c["other_s"] for c in timed),
    )
    return f"kvtest: harness cost over {len(timed)} tests with transfers: {cost_text(total)}"


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


def phase_line(tests: Mapping[str, TestEntry], top: int = 3) -> str | None:
    """The run's biggest phases, seconds summed over every role of every test (a role waiting for
    another counts its wait): ``kvtest: biggest phases (role-seconds): wait 12.1 s (40%), ...``."""
    totals = phase_totals(tests.values())
    whole = sum(totals.values())
    if whole <= 0:
        return None
    parts = [f"{name} {sec:.2f} s ({sec / whole:.0%})" for name, sec in list(totals.items())[:top]]
    return f"kvtest: biggest phases over {whole:.2f} role-seconds: " + ", ".join(parts)


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
    cost = cost_line(tests)
    if cost is not None:
        reporter.write_line(cost)
    phases = phase_line(tests)
    if phases is not None:
        reporter.write_line(phases)
    for line in environment_lines(tests):
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
