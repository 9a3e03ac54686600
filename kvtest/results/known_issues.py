"""The registry of known upstream issues and documented limits, and what they do to an outcome.

A known issue is a behaviour where the real llm_datadist is wrong. A test that hits one keeps the
documented expectation; where the issue applies (backend, CANN version) the test's merged call
outcome goes through :func:`settle`: a failure is the expected ``xfailed``, a pass fails the run with
``[XPASS(strict)] ... fixed upstream: drop the entry``, so a CANN upgrade that fixes it shows up.
Tests mark themselves with :func:`kvtest.known_issues.expect_issue`.

A documented limit is a case the real API says it does not support (:data:`LIMITS`).

The results file records ``known_issue`` per test; :func:`issue_changes` lists the issues that
appeared or went away between two runs (``kvtest compare``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

__all__ = [
    "KNOWN",
    "KNOWN_ISSUES",
    "LIMITS",
    "KnownIssue",
    "Limit",
    "applies",
    "at_least",
    "issue_changes",
    "settle",
]


@dataclass(frozen=True)
class KnownIssue:
    """A wrong behaviour of the real stack. ``source``: path in hicann/hixl; ``fixed_in``: the first
    CANN version with the fix, once known (the entry then stops applying from that version)."""

    id: str
    summary: str
    source: str
    backends: frozenset[str]
    affected: str
    fixed_in: str | None = None


@dataclass(frozen=True)
class Limit:
    """A documented unsupported case; ``supported_from``: the first CANN version known to support it."""

    id: str
    summary: str
    source: str
    backends: frozenset[str]
    supported_from: str | None = None


KNOWN_ISSUES: dict[str, KnownIssue] = {
    issue.id: issue
    for issue in (
        KnownIssue(
            id="transfer-layers-absolute-dst-index",
            summary=(
                "transfer_cache_async maps source layer i to list(dst_layer_range)[i] (i absolute, not "
                "relative to src_layer_range.start): a range starting above 0 lands shifted, then an "
                "IndexError ends the worker thread and synchronize() reports LLM_SUCCESS "
                "(get_results() gives None)"
            ),
            source="src/python/llm_datadist/llm_datadist/v2/llm_utils.py TransferCacheJob.transfer_layers",
            backends=frozenset({"npu", "sim"}),
            affected="every release with TransferCacheJob (CANN 8.2.RC1 on); still in hicann/hixl 9ed283b",
        ),
    )
}

LIMITS: dict[str, Limit] = {
    limit.id: limit
    for limit in (
        Limit(
            id="push-unequal-layer-ranges",
            summary=(
                "push_blocks/push_cache: only src_layer_range equal to dst_layer_range is supported "
                "(当前仅支持src_layer_range和dst_layer_range取值一致)"
            ),
            source="docs/zh/api/python/CacheManager.md (push_blocks, push_cache: 约束说明)",
            backends=frozenset({"npu"}),
        ),
    )
}

#: set on an item (by kvtest.known_issues.expect_issue) whose test hits a known issue that applies
KNOWN = pytest.StashKey[KnownIssue]()


def _version_key(text: str) -> tuple[int, ...]:
    """``8.2.RC1`` < ``8.2.0`` < ``8.3.RC1``: numbers compare as numbers, RCn before the release."""
    key: list[int] = []
    for part in text.strip().split("."):
        rc = re.fullmatch(r"(?i)rc(\d+)", part)
        if rc:
            key += [0, int(rc.group(1))]
        elif part.isdigit():
            key += [1, int(part)]
        else:
            raise ValueError(f"CANN version {text!r} is not of the form 8.2.RC1 or 8.2.0")
    return tuple(key)


def at_least(version: str | None, first: str | None) -> bool:
    if version is None or first is None:
        return False
    try:
        return _version_key(version) >= _version_key(first)
    except ValueError:
        return False  # an unreadable version: assume the issue is still there


def applies(issue: KnownIssue, backend: str, cann: str | None) -> bool:
    """Whether ``issue`` is expected on ``backend`` at CANN version ``cann`` (None: unknown)."""
    return backend in issue.backends and not at_least(cann, issue.fixed_in)


def _reason(issue: KnownIssue) -> str:
    return (
        f"known upstream issue {issue.id}: {issue.summary} [{issue.source}; affected: {issue.affected}]. "
        f"If this passes, it is fixed upstream: drop the entry {issue.id!r} from "
        "kvtest/results/known_issues.py "
        "(or set its fixed_in to this CANN version)"
    )


def settle(item: pytest.Item, rep: pytest.TestReport, *, decides: bool) -> None:
    """Turn the call report of a test that hit a known issue into a strict-xfail outcome.

    ``decides``: this report is the merged one (p0, or a run without peers): a pass becomes the
    strict XPASS failure. A follower only turns its own failure into xfailed and leaves a pass alone,
    since p0 decides the test. ``rep.known_issue`` is set for the results file.
    """
    issue = item.stash.get(KNOWN, None)
    if issue is None or rep.when != "call" or rep.skipped:
        return
    if rep.failed:
        rep.outcome = "skipped"
        rep.wasxfail = _reason(issue)
        rep.known_issue = {"id": issue.id, "state": "hit"}  # type: ignore[attr-defined]
    elif decides:
        rep.outcome = "failed"
        rep.longrepr = f"[XPASS(strict)] {_reason(issue)}"
        rep.known_issue = {"id": issue.id, "state": "fixed"}  # type: ignore[attr-defined]


def issue_changes(
    baseline: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Lines naming the known issues that appeared or went away between two runs' ``tests`` maps.

    An issue is *hit* in a run when some test recorded ``known_issue.state == "hit"``.
    """

    def hit(tests: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for nodeid, entry in tests.items():
            known = entry.get("known_issue") or {}
            if known.get("state") == "hit":
                out.setdefault(str(known.get("id")), []).append(nodeid)
        return out

    before, after = hit(baseline), hit(current)
    fixed = {
        str((e.get("known_issue") or {}).get("id"))
        for e in current.values()
        if (e.get("known_issue") or {}).get("state") == "fixed"
    }
    lines = []
    for issue_id in sorted(set(after) - set(before)):
        lines.append(f"known issue appeared: {issue_id} ({', '.join(sorted(after[issue_id]))})")
    for issue_id in sorted(set(before) - set(after)):
        how = "fixed upstream (strict XPASS)" if issue_id in fixed else "not hit in the current run"
        lines.append(f"known issue went away: {issue_id}: {how} ({', '.join(sorted(before[issue_id]))})")
    return lines
