"""The ``kvtest compare --plot`` picture: baseline vs current GB/s (medians when gated) per test.

Imported only when ``--plot`` is given; matplotlib (the ``plot`` extra) is imported on first use.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from kvtest.results.metrics import TOO_NOISY, TOO_SMALL

if TYPE_CHECKING:
    from kvtest.results.compare import Row

__all__ = ["ChartUnavailable", "plot", "require"]

_BASELINE = "#9e9e9e"
_CURRENT = "#1f77b4"
_REGRESSION = "#d62728"
_LABEL_CHARS = 70


class ChartUnavailable(Exception):
    """matplotlib is missing; ``str()`` says how to install it."""


def require() -> Any:
    """The ``matplotlib.pyplot`` module on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError:
        raise ChartUnavailable("--plot needs matplotlib: pip install 'kvtest[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row: Row) -> str:
    path, sep, rest = row.label.partition("::")
    text = path.rsplit("/", 1)[-1] + sep + rest
    # the parametrization at the end of a node id tells rows apart, so cut from the front
    return text if len(text) <= _LABEL_CHARS else "..." + text[-(_LABEL_CHARS - 3):]


def _note(row: Row) -> str:
    """The text at the current bar: a regression, an outcome change, or why the figure is not gated."""
    if row.regression:
        return row.verdict
    if row.current not in (None, "passed") or row.baseline is None or row.current is None:
        return row.verdict
    if row.verdict in (TOO_SMALL, TOO_NOISY) or (row.gated and row.verdict != "ok"):
        return row.verdict
    return ""


def _change(row: Row) -> str:
    """``-33.1% p=0.0011`` beside a gated row's baseline bar; the bare change for the others."""
    change = row.change
    if change is None:
        return ""
    return row.figures.replace(", ", " ") if row.gated else f"{change * 100:+.1f}%"


def plot(rows: Sequence[Row], path: str | os.PathLike[str], *, title: str) -> None:
    """Write a PNG: one pair of bars per row (grey baseline, blue current, red for a regression).

    Gated rows show the change and the U test's p-value; rows not gated are faint and hatched and
    say why (too small, too noisy); rows whose test did not pass on a side, or is missing there,
    get a note.
    """
    plt = require()
    n = max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * n))
    try:
        height = 0.38
        ys = list(range(len(rows)))
        base = [r.baseline_gbps or 0.0 for r in rows]
        cur = [r.current_gbps or 0.0 for r in rows]
        # a figure that is not gated is drawn faint and hatched: it is there to read, not to judge
        from matplotlib.colors import to_rgba

        faint = [r.verdict in (TOO_SMALL, TOO_NOISY) for r in rows]
        ax.barh([y - height / 2 for y in ys], base, height,
                color=[to_rgba(_BASELINE, 0.35 if f else 1.0) for f in faint])
        ax.barh([y + height / 2 for y in ys], cur, height,
                color=[to_rgba(_REGRESSION if r.regression else _CURRENT, 0.35 if f else 1.0)
                       for r, f in zip(rows, faint)])
        for y, f, c in zip(ys, faint, cur):
            if f:
                ax.barh(y + height / 2, c, height, fill=False, hatch="//", edgecolor="dimgray", linewidth=0)
        top = max([*base, *cur, 1e-9])
        for y, r, b, c in zip(ys, rows, base, cur):
            text = _change(r)
            if text:
                ax.text(b + top * 0.01, y - height / 2, text, va="center", fontsize=8,
                        color=_REGRESSION if r.regression else "black")
            note = _note(r)
            if note:
                ax.text(c + top * 0.01 if c else top * 0.01, y + height / 2, note, va="center",
                        fontsize=8, fontweight="bold", color=_REGRESSION if r.regression else "dimgray")
        ax.set_yticks(ys)
        ax.set_yticklabels([_label(r) for r in rows], fontsize=8)
        for tick, r in zip(ax.get_yticklabels(), rows):
            if r.regression:
                tick.set_color(_REGRESSION)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.3)
        ax.set_xlabel("GB/s (higher is better)")
        ax.set_title(title, fontsize=10, loc="left", pad=22)
        ax.grid(axis="x", alpha=0.3)
        from matplotlib.patches import Patch

        handles = [Patch(color=_BASELINE, label="baseline"), Patch(color=_CURRENT, label="current"),
                   Patch(color=_REGRESSION, label="current, regression"),
                   Patch(facecolor=_CURRENT, alpha=0.35, hatch="//", edgecolor="dimgray", label="not gated")]
        ax.legend(handles=handles, loc="lower right", bbox_to_anchor=(1, 1), ncol=4, fontsize=8,
                  frameon=False)
        fig.tight_layout()
        fig.savefig(os.fspath(path), format="png", dpi=110)
    finally:
        plt.close(fig)
