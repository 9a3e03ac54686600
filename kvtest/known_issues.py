"""Known upstream issues and documented limits, as a test body uses them.

``expect_issue(request, "<id>")``: the test hits a known upstream issue (a behaviour where the real
llm_datadist is wrong); where it applies to this run's backend and CANN version the test becomes a
strict xfail on its merged outcome, and a pass reads ``[XPASS(strict)] ... fixed upstream: drop the
entry``. The sim reproduces each issue by default (``KVTEST_SIM_FIXED=<id>`` makes it behave as fixed,
see :mod:`kvtest.backends.sim.upstream`).

``require_supported(request, "<id>")``: skip the case where a documented limit applies.

The registry itself is :mod:`kvtest.results.known_issues`.
"""

from __future__ import annotations

import pytest

from kvtest.results.known_issues import KNOWN, KNOWN_ISSUES, LIMITS, KnownIssue, Limit, applies, at_least

__all__ = ["KNOWN_ISSUES", "LIMITS", "KnownIssue", "Limit", "expect_issue", "require_supported"]


def _backend_and_version(config: pytest.Config) -> tuple[str, str | None]:
    from kvtest.state import chosen_backend

    backend, _ = chosen_backend(config)
    if backend.name != "npu":
        return backend.name, None
    from kvtest.host.fingerprint import cann_version

    return backend.name, cann_version()


def expect_issue(request: pytest.FixtureRequest, issue_id: str) -> None:
    """Mark the running test as hitting ``issue_id`` where it applies (a strict xfail on its merged
    outcome). Call it from the body, on every role, before the part that the issue breaks."""
    if issue_id not in KNOWN_ISSUES:
        known = ", ".join(KNOWN_ISSUES)
        raise ValueError(f"{issue_id!r} is not in kvtest.results.known_issues.KNOWN_ISSUES ({known})")
    issue = KNOWN_ISSUES[issue_id]
    if applies(issue, *_backend_and_version(request.config)):
        request.node.stash[KNOWN] = issue


def require_supported(request: pytest.FixtureRequest, limit_id: str) -> None:
    """Skip the running test where the documented limit ``limit_id`` applies; every role calls it
    at the start of the body, so all of them skip together."""
    limit = LIMITS[limit_id]
    backend, cann = _backend_and_version(request.config)
    if backend in limit.backends and not at_least(cann, limit.supported_from):
        version = f"CANN {cann}" if cann else "this CANN"
        pytest.skip(f"documented limit {limit.id} on {backend} ({version}): {limit.summary}; {limit.source}")


