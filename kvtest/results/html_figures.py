"""kvtest's figures in pytest-html's report (``pytest --html=report.html``), through its hooks.

The plugin registers :class:`HtmlFigures` only when pytest-html is active (its hooks do not exist
otherwise). Each test's row gets a ``kvtest`` column (each role's GB/s or latency per API, and the
failure class), read from the ``kv.*`` properties p0 puts on the call report (the same ones JUnit XML
gets); the summary gets a chart of every test's GB/s per API (inline SVG, like ``kvtest report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import pytest

from kvtest.results.svg import Bar, bar_chart

__all__ = ["HtmlFigures", "figures_of"]


def figures_of(properties: Sequence[tuple[str, object]]) -> tuple[dict[tuple[str, str], dict[str, float]],
                                                                     str | None]:
    """``{(role, api): {"gbps": ..., "bytes": ..., "p50_ms": ...}}`` and the failure class, from a
    report's ``user_properties`` (``kv.d0.pull_blocks.gbps`` ...)."""
    figures: dict[tuple[str, str], dict[str, float]] = {}
    failure = None
    for name, value in properties:
        if name == "kv.failure":
            failure = str(value)
            continue
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "kv" and parts[3] in ("gbps", "bytes", "p50_ms", "p99_ms"):
            try:
                figures.setdefault((parts[1], parts[2]), {})[parts[3]] = float(str(value))
            except ValueError:
                continue
    return figures, failure


def _cell_text(figures: dict[tuple[str, str], dict[str, float]], failure: str | None) -> str:
    lines = []
    for (role, api), f in figures.items():
        text = f"{role} {api} {f.get('gbps', 0.0):.3g} GB/s"
        if "p50_ms" in f:
            text += f" (p50 {f['p50_ms']:.3g} ms)"
        lines.append(escape(text))
    if failure:
        lines.append(f"<b>failure: {escape(failure)}</b>")
    return "<br>".join(lines)


class HtmlFigures:
    """The pytest-html hooks; keeps every call report's GB/s for the summary chart."""

    def __init__(self) -> None:
        self.bars: list[Bar] = []

    @pytest.hookimpl
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.append('<th class="col-kvtest">kvtest</th>')

    @pytest.hookimpl
    def pytest_html_results_table_row(self, report: pytest.TestReport, cells: list[str]) -> None:
        figures, failure = figures_of(report.user_properties)
        if report.when == "call":
            for (role, api), f in figures.items():
                if "gbps" in f:
                    self.bars.append(Bar(label=f"{report.nodeid.split('::')[-1]} {role} {api}",
                                         value=f["gbps"], title=f"{report.nodeid} {role} {api}",
                                         css="bar" if report.passed else "bar failed"))
        cells.append(f'<td class="col-kvtest">{_cell_text(figures, failure)}</td>')

    @pytest.hookimpl
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str],
                                    session: Any) -> None:
        if not self.bars:
            return
        style = ("<style>svg.kvtest .grid{stroke:#e5e7eb}svg.kvtest .tick,svg.kvtest .label{font-size:11px}"
                 "svg.kvtest .bar{fill:#2563eb}svg.kvtest .bar.failed{fill:#dc2626}</style>")
        chart = bar_chart(self.bars, unit="GB/s", title="kvtest: GB/s per test, role and API")
        prefix.append(f"{style}<h2>kvtest: GB/s per test, role and API</h2>"
                      + chart.replace('class="chart"', 'class="chart kvtest"', 1))
