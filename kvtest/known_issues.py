"""Known upstream issues and documented limits, as a test body uses them.

``issue = expect_issue(request, "<id>")``: the test may hit a known upstream issue (a behaviour where
the real llm_datadist is wrong). The test keeps the documented expectation and recognises the symptom
itself: around the call that shows it, ``with issue.watching():`` (a worker thread that ends with the
issue's ``worker_error`` is part of the symptom: kept in ``issue.worker_error``, no traceback), then
``issue.shows(<the exact symptom seen>, "<what>")``, which is True only where the issue applies and
the symptom showed; the test then checks the symptom in place of the documented behaviour. Every role
that expects the issue must show it for the strict xfail; any failure fails as usual, and a pass
without the symptom reads ``[XPASS(strict)] ... fixed upstream: drop the entry``
(:func:`kvtest.results.known_issues.settle`). The sim reproduces each issue by default
(``KVTEST_SIM_FIXED=<id>`` makes it behave as fixed, see :mod:`kvtest.backends.sim.upstream`).

``require_supported(request, "<id>")``: skip the case where a documented limit applies.

The registry itself is :mod:`kvtest.results.known_issues`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from kvtest.results.known_issues import (
    KNOWN,
    KNOWN_ISSUES,
    LIMITS,
    SHOWN,
    KnownIssue,
    Limit,
    applies,
    at_least,
)

__all__ = [
    "KNOWN_ISSUES",
    "LIMITS",
    "Expectation",
    "KnownIssue",
    "Limit",
    "expect_issue",
    "require_supported",
]


def _backend_and_version(config: pytest.Config) -> tuple[str, str | None]:
    from kvtest.state import chosen_backend

    backend, _ = chosen_backend(config)
    if backend.name != "npu":
        return backend.name, None
    from kvtest.host.fingerprint import cann_version

    return backend.name, cann_version()


class Expectation:
    """One role's expectation of a known issue in one test (see the module docstring)."""

    def __init__(self, item: pytest.Item, issue: KnownIssue | None) -> None:
        self._item = item
        #: the issue, None where it does not apply to this run (backend, CANN version)
        self.issue = issue
        #: the exception that ended a worker thread inside :meth:`watching`, if the issue names one
        self.worker_error: BaseException | None = None

    @property
    def applies(self) -> bool:
        return self.issue is not None

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Around the call that shows the issue: a thread that ends with the issue's ``worker_error``
        is kept (the symptom, not a traceback); any other thread error goes on as usual."""
        wanted = self.issue.worker_error if self.issue is not None else None
        if wanted is None:
            yield
            return
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type.__name__ == wanted and self.worker_error is None:
                self.worker_error = args.exc_value
            else:
                previous(args)

        threading.excepthook = hook
        try:
            yield
        finally:
            threading.excepthook = previous

    def shows(self, seen: bool, what: str) -> bool:
        """Record ``what`` as part of the symptom when ``seen`` and the issue applies; return whether
        it did (the test then checks the symptom in place of the documented behaviour)."""
        if self.issue is None or not seen:
            return False
        self._item.stash.setdefault(SHOWN, []).append(what)
        return True


def expect_issue(request: pytest.FixtureRequest, issue_id: str) -> Expectation:
    """This role's :class:`Expectation` of ``issue_id``: marks the running test where the issue applies
    to this run. Call it on every role that sees part of the symptom."""
    if issue_id not in KNOWN_ISSUES:
        known = ", ".join(KNOWN_ISSUES)
        raise ValueError(f"{issue_id!r} is not in kvtest.results.known_issues.KNOWN_ISSUES ({known})")
    issue = KNOWN_ISSUES[issue_id]
    if not applies(issue, *_backend_and_version(request.config)):
        return Expectation(request.node, None)
    request.node.stash[KNOWN] = issue
    return Expectation(request.node, issue)


def require_supported(request: pytest.FixtureRequest, limit_id: str) -> None:
    """Skip the running test where the documented limit ``limit_id`` applies; every role calls it
    at the start of the body, so all of them skip together."""
    limit = LIMITS[limit_id]
    backend, cann = _backend_and_version(request.config)
    if backend in limit.backends and not at_least(cann, limit.supported_from):
        version = f"CANN {cann}" if cann else "this CANN"
        pytest.skip(f"documented limit {limit.id} on {backend} ({version}): {limit.summary}; {limit.source}")


