"""p0's record of the run: each test's outcome on every role, its transfers, JUnit properties.

The results file (``--kv-results``) is rewritten after every test, so a run that dies keeps every
test that finished before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from kvtest.results.metrics import TransferRecord, summarize
from kvtest.results.results import ResultsWriter, RoleEntry, RoleInfo, role_entry
from kvtest.run.failure import resolve
from kvtest.run.messages import RoleResult

__all__ = ["RunRecorder", "transfer_properties"]

_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def transfer_properties(results: Iterable[RoleResult]) -> list[tuple[str, object]]:
    """``kv.<role>.<api>.gbps`` and friends for every role's timed transfers."""
    props: list[tuple[str, object]] = []
    for result in results:
        records = [TransferRecord.from_json(t) for t in result.transfers]
        for api, s in summarize(records).items():
            base = f"kv.{result.role}.{api}"
            props += [(f"{base}.bytes", s["bytes"]), (f"{base}.gbps", round(s["gbps"], 4))]
            if s.get("p50_ms") is not None:
                props += [(f"{base}.p50_ms", s["p50_ms"]), (f"{base}.p99_ms", s["p99_ms"])]
    return props


class _Pending:
    def __init__(self) -> None:
        self.outcome: str | None = None
        self.roles: dict[str, RoleEntry] = {}
        self.transfers: list[dict[str, Any]] = []
        self.known_issue: dict[str, str] | None = None
        self.failure: str | None = None
        self.failure_cause: str | None = None
        #: each role's phase clock as of its latest report (cumulative over setup, call, teardown)
        self.phases: dict[str, dict[str, float]] = {}


class RunRecorder:
    """Collects each test's phases and writes one entry when its teardown is reported."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.writer: ResultsWriter | None = None
        self._pending: dict[str, _Pending] = {}
        self._roles: tuple[dict[str, RoleInfo], list[str]] | None = None

    def open(self, run_id: str, fingerprint: dict[str, str]) -> None:
        if self.writer is None:
            self.writer = ResultsWriter(self.path, run_id=run_id, fingerprint=fingerprint)
            if self._roles is not None:
                self.writer.set_roles(*self._roles)

    def set_roles(self, roles: dict[str, RoleInfo], stack_differences: list[str]) -> None:
        """Every role's host and fingerprint (from the handshake), kept for the file when it opens."""
        self._roles = (roles, stack_differences)
        if self.writer is not None:
            self.writer.set_roles(roles, stack_differences)

    def report(self, nodeid: str, rep: pytest.TestReport, results: Sequence[RoleResult]) -> None:
        pending = self._pending.setdefault(nodeid, _Pending())
        if rep.when == "setup" and not rep.passed:
            pending.outcome = "error" if rep.failed else "skipped"
        elif rep.when == "call":
            pending.outcome = rep.outcome
            pending.known_issue = getattr(rep, "known_issue", None)
        elif rep.when == "teardown" and rep.failed and pending.outcome in (None, "passed"):
            pending.outcome = "error"
        results, verdict = resolve(results)
        if pending.failure is None and rep.failed:
            # the first failing phase decides; a report failed by the leader alone (a strict XPASS,
            # a failed teardown with no role failing) is the product's
            pending.failure = verdict.failure or "product"
            pending.failure_cause = verdict.cause or _first_line(rep)
        for result in results:
            self._merge_role(pending, result)
            if result.phases:
                pending.phases[result.role] = dict(result.phases)
            if rep.when == "call" or (rep.when == "setup" and not rep.passed):
                pending.transfers += [{**t, "role": t.get("role") or result.role} for t in result.transfers]
        if rep.when == "teardown":
            del self._pending[nodeid]
            if self.writer is not None:
                self.writer.add(
                    nodeid, pending.outcome or "passed", pending.roles, pending.transfers,
                    pending.known_issue, pending.failure, pending.failure_cause, pending.phases,
                )

    @staticmethod
    def _merge_role(pending: _Pending, result: RoleResult) -> None:
        old = pending.roles.get(result.role)
        duration = result.duration + (old["duration_s"] if old else 0.0)
        if old is None or _RANK.get(result.outcome, 2) > _RANK.get(old["outcome"], 2):
            failed = result.outcome != "passed"
            pending.roles[result.role] = role_entry(
                result.outcome,
                step=result.step if failed else None,
                message=result.message if failed else None,
                duration_s=duration,
                failure=result.failure if result.outcome == "failed" else None,
            )
        else:
            old["duration_s"] = duration


def _first_line(rep: pytest.TestReport) -> str:
    crash = getattr(rep.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(rep.longrepr or "")
    return " ".join(text.split())[:200] or "failed"
