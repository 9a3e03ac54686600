"""Merging every role's outcome of one test into the leader's report: pure functions, no I/O.

The leader gathers each peer's :class:`~kvtest.run.messages.RoleResult`; :func:`fold` decides the
merged outcome and its text, and :class:`MergedRepr` carries the text in the pytest report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kvtest.run.messages import RoleResult

__all__ = ["Folded", "MergedRepr", "fold", "merge_results"]


def merge_results(results: Iterable[RoleResult], max_detail_lines: int = 40) -> str | None:
    """The text a leader's report gets for its peers' failures; None when none failed.

    Primary failures come first; one that only echoes another role's failure comes last.
    """
    failed = sorted((r for r in results if r.outcome == "failed"), key=lambda r: (r.secondary, r.role))
    if not failed:
        return None
    lines = [r.headline for r in failed]
    for result in failed:
        if result.details and not result.secondary:
            detail = result.details.rstrip().splitlines()
            if len(detail) > max_detail_lines:
                detail = [f"... ({len(detail) - max_detail_lines} lines above cut)"] + detail[
                    -max_detail_lines:
                ]
            lines += ["", f"---- {result.role} ----", *detail]
    return "\n".join(lines)


@dataclass(frozen=True)
class _Crash:
    message: str
    path: str
    lineno: int


class MergedRepr:
    """A leader's failure report that carries the other roles' failures.

    ``reprcrash.message`` is the primary failure's one line (what the short summary and JUnit show).
    """

    def __init__(
        self, headline: str, path: str, lineno: int, own: Any, peers_text: str, own_first: bool
    ) -> None:
        self.reprcrash = _Crash(headline, path, lineno)
        self._own = own
        self._peers = peers_text
        self._own_first = own_first

    def _own_text(self) -> str:
        return str(self._own) if self._own is not None else ""

    def toterminal(self, tw: Any) -> None:
        own = self._own_text()
        blocks = [(None, own), ("kvtest: the other roles", self._peers)]
        if not self._own_first:
            blocks = [("kvtest: the other roles", self._peers), ("this role", own)]
        for title, text in blocks:
            if not text:
                continue
            if title:
                tw.sep("-", title)
            if title is None and hasattr(self._own, "toterminal"):
                self._own.toterminal(tw)
            else:
                tw.line(text)

    def __str__(self) -> str:
        own = self._own_text()
        if not own:
            return self._peers
        parts = [own, self._peers] if self._own_first else [self._peers, own]
        return "\n\n".join(parts)



@dataclass(frozen=True)
class Folded:
    """The leader's merged outcome of one phase: ``failed`` with a headline, or ``skipped``."""

    outcome: str  # failed | skipped
    headline: str  # the primary failure's one line, or the skip reason
    peers_text: str = ""
    own_first: bool = False  # this role's own failure is the primary one
    show_own: bool = False  # this role's failure text belongs in the report
    own_line: str = ""  # one line for this role when it failed only because a peer did


def fold(me: str, own: RoleResult, own_outcome: str, peers: list[RoleResult]) -> Folded | None:
    """Fold the peers' outcomes into this role's report (``own_outcome``: passed, failed or skipped).

    None when this role's report stands as it is.
    """
    own_failed = own_outcome == "failed"
    text = merge_results(peers)
    if text is None:
        skipped = next((p for p in peers if p.outcome == "skipped"), None)
        if own_outcome == "passed" and skipped is not None:
            return Folded("skipped", f"{skipped.role}: {skipped.message}")
        return None
    primary = next(p for p in sorted(peers, key=lambda r: (r.secondary, r.role)) if p.outcome == "failed")
    own_first = own_failed and not own.secondary
    headline = f"{me} failed at step {own.step!r}: {own.message}" if own_first else primary.headline
    # A role that failed only because a peer did needs one line, not its traceback.
    show_own = own_failed and (own_first or own.message not in text)
    own_line = "" if own_first else f"{me}: {own.message}"
    return Folded("failed", headline, text, own_first, show_own, own_line)
