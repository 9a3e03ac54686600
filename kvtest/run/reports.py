"""pytest reports and kvtest's role results, both ways: this role's :class:`RoleResult` from its
report, the JUnit failure labels, and every role's results folded into the leader's report."""

from __future__ import annotations

import pytest

from kvtest.results.known_issues import expectation
from kvtest.run.errors import PeerDead, PeerFailed
from kvtest.run.failure import classify, resolve
from kvtest.run.merge import MergedRepr, fold
from kvtest.run.messages import RoleResult
from kvtest.run.scope import TestScope

__all__ = ["failure_text", "fold_into", "label_failure", "own_result"]


def failure_text(rep: pytest.TestReport) -> tuple[str, str]:
    """(one-line message, full text) of a failed or skipped report."""
    if rep.skipped and isinstance(rep.longrepr, tuple):
        return str(rep.longrepr[2]), ""
    crash = getattr(rep.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(rep.longrepr).strip().splitlines()[-1:]
    return " ".join(str(message).split()) or "failed", rep.longreprtext


def own_result(
    me: str, scope: TestScope | None, item: pytest.Item, rep: pytest.TestReport, call: pytest.CallInfo[None]
) -> RoleResult:
    """This role's outcome of one phase, as it is published to the leader."""
    outcome = rep.outcome
    message, details = failure_text(rep) if outcome != "passed" else ("", "")
    secondary = call.excinfo is not None and isinstance(call.excinfo.value, (PeerFailed, PeerDead))
    if secondary and call.excinfo is not None:
        message = str(call.excinfo.value)
    step = scope.current_step if scope is not None else rep.when
    records = scope.metrics.records if scope is not None else []
    failed = outcome == "failed" and not secondary  # a secondary one takes the primary's class
    exc = call.excinfo.value if call.excinfo is not None else None
    return RoleResult(
        me,
        outcome,
        step,
        message,
        details,
        secondary=secondary,
        duration=rep.duration,
        transfers=tuple(dict(r.to_json()) for r in records),
        failure=classify(exc) if failed else None,
        known_issue=expectation(item) if rep.when == "call" else None,
        phases=scope.metrics.clock.rounded() if scope is not None else None,
    )


def label_failure(item: pytest.Item, rep: pytest.TestReport, results: list[RoleResult]) -> list[RoleResult]:
    """``kv.failure`` (environment or product) and ``kv.failure.cause`` JUnit properties, once per
    test, on its first failing report; return ``results`` with their failure classes resolved."""
    results, verdict = resolve(results)
    labelled = any(name == "kv.failure" for name, _ in item.user_properties)
    if verdict.failure is not None and rep.failed and not labelled:
        # on the item too: pytest's JUnit XML writes the properties of the teardown report
        props = [("kv.failure", verdict.failure), ("kv.failure.cause", verdict.cause or "")]
        rep.user_properties.extend(props)
        item.user_properties.extend(props)
    return results


def fold_into(
    me: str, item: pytest.Item, rep: pytest.TestReport, own: RoleResult, peers: list[RoleResult]
) -> None:
    """The leader's report of a phase becomes the merged outcome of every role."""
    folded = fold(me, own, rep.outcome, peers)
    if folded is None:
        return
    path, lineno = str(item.path), item.location[1] or 0
    if folded.outcome == "skipped":
        rep.outcome = "skipped"
        rep.longrepr = (path, lineno, folded.headline)
        return
    own_repr = (rep.longrepr if folded.own_first else folded.own_line) if folded.show_own else None
    rep.longrepr = MergedRepr(
        folded.headline, path, lineno + 1, own_repr, folded.peers_text, folded.own_first
    )  # type: ignore[assignment]
    rep.outcome = "failed"
