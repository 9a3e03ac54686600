"""The registry of known upstream issues and documented limits, and what they do to an outcome.

A known issue is a behaviour where the real llm_datadist is wrong. A test that hits one keeps the
documented expectation and recognises the issue's symptom itself: each role that expects the issue
records what it saw of the symptom (:data:`SHOWN`, through :class:`kvtest.known_issues.Expectation`),
only where the symptom showed exactly. :func:`settle` decides the merged call outcome from that:

- any failure stays a failure (a link failure, a crash, a byte the issue does not explain, a timeout);
- a pass where every role that expected the issue showed its symptom is the expected ``xfailed``;
- a pass where none showed it fails the run with ``[XPASS(strict)] ... fixed upstream: drop the
  entry``, so a CANN upgrade that fixes it shows up;
- a pass where some roles showed it and others did not fails, naming them: half a symptom is neither
  the documented behaviour nor the issue.

An *intermittent* issue (a race, ``KnownIssue.intermittent``) shows only under some schedules: a pass
where no role showed it is a plain pass, and one where a role showed it is the expected ``xfailed``.

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
    "SHOWN",
    "KnownIssue",
    "Limit",
    "applies",
    "at_least",
    "expectation",
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
    #: the exception that ends a worker thread of the real package as part of the symptom, if any
    worker_error: str | None = None
    #: a race that shows only under some schedules: a pass without the symptom is a plain pass (no
    #: strict XPASS, so a fix is not detected); a pass where a role showed it is the expected xfail
    intermittent: bool = False


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
            worker_error="IndexError",  # TransferAsyncThread.run: the exception ends the thread
        ),
        KnownIssue(
            id="relink-stale-entity-reap",
            summary=(
                "unlink then link again with the same peer cluster: unlink only marks the old comm entity "
                "destroyed; the FSM thread (HandleAllEntities) reaps it later with "
                "cluster_id_to_entity_id_.erase(cluster id), and when that pass comes after the new link's "
                "AddEntity it erases the NEW entity's mapping: query_register_mem_status said OK, yet "
                "pulls to that cluster fail with LLM_NOT_YET_LINK until the next link. Only without "
                "EnableRemoteCacheAccessible (the FSM thread runs) and only when the FSM thread is late "
                "(seen on a loaded 2-core CI machine)"
            ),
            source=(
                "src/llm_datadist/link_mgr/comm_entity_manager.cc CommEntityManager::HandleAllEntities "
                "(with comm_link_manager.cc Unlink/DestroyRes and CommEntityManager::AddEntity)"
            ),
            backends=frozenset({"npu", "sim"}),
            affected="hicann/hixl 9ed283b (pinned, and HEAD in 2026-12); earlier releases unchecked",
            intermittent=True,
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
#: what this role saw of the issue's symptom, one line per part (kvtest.known_issues.Expectation.shows)
SHOWN = pytest.StashKey[list[str]]()


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
    head = f"known upstream issue {issue.id}: {issue.summary} [{issue.source}; affected: {issue.affected}]."
    if issue.intermittent:
        return f"{head} A race: a run without the symptom passes and says nothing about a fix"
    return (
        f"{head} If this passes, it is fixed upstream: drop the entry {issue.id!r} from "
        "kvtest/results/known_issues.py "
        "(or set its fixed_in to this CANN version)"
    )


def expectation(item: pytest.Item) -> dict[str, Any] | None:
    """This role's expectation of a known issue for its :class:`~kvtest.run.messages.RoleResult`:
    ``{"id": ..., "shown": [...]}``, or None when the test expects no issue that applies."""
    issue = item.stash.get(KNOWN, None)
    if issue is None:
        return None
    shown: list[str] = item.stash.get(SHOWN, [])
    return {"id": issue.id, "shown": list(shown)}


def settle(
    item: pytest.Item,
    rep: pytest.TestReport,
    *,
    decides: bool,
    roles: Mapping[str, Mapping[str, Any] | None] | None = None,
) -> None:
    """Decide the call report of a test that expects a known issue (see the module docstring).

    ``decides``: this report is the merged one (p0, or a run without peers); a follower only turns
    its own pass that showed the symptom into xfailed, since p0 decides the test. ``roles``: each
    role's :func:`expectation` (None: this role's own only). ``rep.known_issue`` is set for the
    results file.
    """
    if rep.when != "call" or rep.skipped:
        return
    if roles is None or not decides:
        roles = {"": expectation(item)}
    expecting = {role: e for role, e in roles.items() if e is not None}
    if not expecting:
        return
    ids = {str(e["id"]) for e in expecting.values()}
    issue = KNOWN_ISSUES.get(min(ids)) if len(ids) == 1 else None
    if issue is None:
        rep.outcome = "failed"
        rep.longrepr = f"kvtest: the roles expect different known issues: {sorted(ids)}"
        return
    if rep.failed:  # whatever failed, it was not the symptom alone: a failure as usual
        rep.known_issue = {"id": issue.id, "state": "failed"}  # type: ignore[attr-defined]
        return
    shown = {role: list(e.get("shown") or []) for role, e in expecting.items()}
    missing = sorted(role or "this role" for role, seen in shown.items() if not seen)
    if issue.intermittent:  # a race: whoever did not show it simply was not hit
        if len(missing) == len(shown):
            return
        shown = {role: lines for role, lines in shown.items() if lines}
        missing = []
    if not missing:
        seen = "; ".join(
            f"{role + ': ' if role else ''}{', '.join(lines)}" for role, lines in sorted(shown.items())
        )
        rep.outcome = "skipped"
        rep.wasxfail = f"{_reason(issue)} Seen: {seen}"
        rep.known_issue = {"id": issue.id, "state": "hit"}  # type: ignore[attr-defined]
    elif not decides:
        return
    elif len(missing) == len(shown):
        rep.outcome = "failed"
        rep.longrepr = f"[XPASS(strict)] {_reason(issue)}"
        rep.known_issue = {"id": issue.id, "state": "fixed"}  # type: ignore[attr-defined]
    else:
        showed = sorted(role for role, seen in shown.items() if seen)
        rep.outcome = "failed"
        rep.longrepr = (
            f"known upstream issue {issue.id}: {', '.join(showed)} showed its symptom but "
            f"{', '.join(missing)} did not: neither the documented behaviour nor the issue"
        )
        rep.known_issue = {"id": issue.id, "state": "failed"}  # type: ignore[attr-defined]


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
