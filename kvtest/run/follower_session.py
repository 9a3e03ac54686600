"""Every other role's hook adapter: :class:`kvtest.run.follower.Follower` replaces pytest's loop and
runs exactly the tests p0 announces, reporting each outcome back."""

from __future__ import annotations

from collections.abc import Generator

import pytest

from kvtest.results.known_issues import settle
from kvtest.run.errors import RendezvousError, RunRefused
from kvtest.run.follower import Follower
from kvtest.run.messages import TestAnnounce
from kvtest.run.reports import label_failure, own_result
from kvtest.run.session import SessionHooks
from kvtest.settings import Settings

__all__ = ["FollowerSession"]

#: the phase under which a report's outcome is published (a failed setup is the test's call)
RESULT_PHASES = {"setup": "call", "call": "call", "teardown": "teardown"}


class FollowerSession(SessionHooks):
    """Every role but p0: joins the run, runs exactly the announced tests, reports each outcome."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.follower = self.make_member(Follower, settings)
        super().__init__(config, settings)
        self.by_id: dict[str, pytest.Item] = {}
        self.ran_any = False
        self._last_step = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.config.option.collectonly:
            return True
        self.by_id = {item.nodeid: item for item in self.collected}
        self._join()
        failed = 0
        try:
            for seq, announced in self.follower.announcements():
                self._run_announced(seq, announced)
            failed = session.testsfailed
        except RendezvousError as exc:
            # p0 hosts the store: without it (or with garbage in it) there is nobody to follow.
            step = f" ({self.me}'s last step: {self._last_step})" if self._last_step else ""
            pytest.exit(f"kvtest: {exc}{step}: stopping", returncode=pytest.ExitCode.TESTS_FAILED)
        finally:
            self.follower.leave(failed)
        return True

    def _join(self) -> None:
        follower = self.follower
        self.resolve_backend()
        self.wait_touched_ahead()
        try:
            run_id = follower.join()
            self.begin_artifacts(run_id)
            stack = follower.agree()
        except RunRefused as exc:
            raise pytest.UsageError(str(exc)) from None
        if stack:
            self.write(f"kvtest: {self.me}: stack differs between roles: " + "; ".join(stack))

    def _run_announced(self, seq: int, announced: TestAnnounce) -> None:
        item = self.by_id.get(announced.nodeid)
        if item is None:
            self.follower.report_missing(seq, announced.nodeid)
            return
        next_id = announced.next.get(self.me)
        self.ran_any = True
        scope = self.new_scope(seq, item, list(announced.roles))
        try:
            nextitem = self.by_id.get(next_id) if next_id else None
            item.ihook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        finally:
            self._last_step = f"{scope.current_step!r} in {item.nodeid}"
            self.follower.scope = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        scope = self.scope
        if scope is None:
            return rep
        own = own_result(self.me, scope, item, rep, call)
        self.abort_on_failure(rep, own)
        if rep.when == "call" or (rep.when == "setup" and not rep.passed) or rep.when == "teardown":
            self.follower.report(scope.seq, RESULT_PHASES[rep.when], own)
        settle(item, rep, decides=False)  # p0 reported the raw outcome above and decides the test
        label_failure(item, rep, [own])  # this role's own JUnit XML (p0's has the merged one)
        return rep

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # The follower's own -m/-k may deselect what p0 announced; it ran p0's tests all the same.
        if self.ran_any and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if session.testsfailed else pytest.ExitCode.OK
        self.exitstatus = int(session.exitstatus)
