"""p0's hook adapter: :class:`kvtest.run.leader.Leader` driven by pytest's loop, every role's outcome
merged into p0's reports, the results file and the summary."""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from typing import Any

import pytest

from kvtest.host.fingerprint import fingerprint
from kvtest.results.known_issues import settle
from kvtest.results.report import write_summary
from kvtest.results.results import RoleInfo
from kvtest.roles.topology import Topology
from kvtest.run.errors import PeerDead, RunRefused
from kvtest.run.failure import ENVIRONMENT
from kvtest.run.launcher import LocalCluster, start_roles
from kvtest.run.leader import Leader
from kvtest.run.messages import RoleResult
from kvtest.run.plan import RunPlan, RunState
from kvtest.run.recording import RunRecorder, transfer_properties
from kvtest.run.reports import fold_into, label_failure, own_result
from kvtest.run.session import SessionHooks, item_timeout, item_topology
from kvtest.run.threads import ThreadBudget
from kvtest.settings import Rendezvous, Settings

__all__ = ["LeaderSession"]


class LeaderSession(SessionHooks):
    """p0: hosts the store, starts the local roles, announces tests, merges outcomes."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.leader = self.make_member(Leader, settings)
        super().__init__(config, settings)
        self.recorder = RunRecorder(settings.results)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        selected = any(item.nodeid in self.kv_items for item in session.items)
        if selected and not session.config.option.collectonly:
            self._start(session)
        try:
            return (yield)
        finally:
            self.leader.finish()

    def _start(self, session: pytest.Session) -> None:
        needed = Topology(1, 1)
        for item in session.items:
            if item.nodeid in self.kv_items:
                needed = needed.union(item_topology(item))
        leader = self.leader
        plan = leader.plan(needed)
        if self.artifacts is not None:
            self.begin_artifacts(plan.run_id)
            if self.recorder.path is None:
                self.recorder.path = self.artifacts.results_path(plan.run_id)
        self.resolve_backend()
        try:
            leader.open(self._launch)
        except BaseException as exc:
            if leader.handshake is not None:
                self._note_roles(refused=True)
            if isinstance(exc, RunRefused):
                raise pytest.UsageError(str(exc)) from None
            raise
        self._note_roles(refused=False)
        self.wait_touched_ahead()

    def _launch(
        self, plan: RunPlan, rdv: Rendezvous, secrets: Mapping[str, str] | None, budget: ThreadBudget
    ) -> LocalCluster:
        s = self.settings
        return start_roles(self.config, s, self.me, plan.topology, rdv, plan.run_id, secrets, budget)

    def _note_roles(self, refused: bool) -> None:
        """Every role's host and fingerprint into the results file; a stack difference in the header."""
        handshake = self.leader.handshake
        assert handshake is not None
        if len(handshake.hellos) < 2 and not refused:
            return
        roles = {
            role: RoleInfo(host=h.host, pid=h.pid, fingerprint=dict(h.fingerprint))
            for role, h in handshake.hellos.items()
        }
        self.recorder.set_roles(roles, handshake.stack)
        if handshake.stack and not refused:
            self.write("kvtest: stack differs between roles: " + "; ".join(handshake.stack))
        if refused and self.recorder.path is not None:
            self._open_recorder()  # the refused run's file says who took part, on which stack

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        never = self.leader.never_joined
        if never is not None and item.nodeid in self.kv_items and not item.get_closest_marker("skip"):
            raise never

    def _next_for_roles(self, nextitem: pytest.Item | None) -> dict[str, str | None]:
        """What each role runs next, so its fixtures of wider scope survive between tests.

        Only pytest's own ``nextitem`` is certain (under xdist a worker runs a subset of the items);
        a role with no next test here tears everything down.
        """
        roles = self.leader.topology.roles
        if nextitem is None or nextitem.nodeid not in self.kv_items:
            return {role: None for role in roles}
        involved = item_topology(nextitem).roles
        return {role: nextitem.nodeid if role in involved else None for role in roles}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        leader = self.leader
        announced = item.nodeid in self.kv_items and not item.get_closest_marker("skip")
        if leader.state is not RunState.OPEN or not announced:
            return (yield)
        timeout = item_timeout(item, self.settings.timeout)
        leader.announce(item.nodeid, item_topology(item).roles, self._next_for_roles(nextitem), timeout)
        try:
            return (yield)
        finally:
            leader.scope = None
            reason = leader.stop_reason()
            if reason is not None:
                item.session.shouldfail = reason

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        leader = self.leader
        own = own_result(self.me, self.scope, item, rep, call)
        results = [own]
        if call.excinfo is not None and call.excinfo.value is leader.never_joined:
            results = self._report_never_joined(rep, own)
        elif self.scope is not None and item.nodeid in self.kv_items:
            self.abort_on_failure(rep, own)
            if call.excinfo is not None and isinstance(call.excinfo.value, PeerDead):
                leader.dead.setdefault(call.excinfo.value.role, str(call.excinfo.value))
            if rep.when == "call" or (rep.when == "setup" and not rep.passed):
                results = self._merge(item, rep, "call", own)
                props = transfer_properties(results)
                rep.user_properties.extend(props)
                item.user_properties.extend(props)
            elif rep.when == "teardown":
                results = self._merge(item, rep, "teardown", own)
        # a known upstream issue: strict xfail when every role that expects it showed its symptom
        settle(item, rep, decides=True, roles={r.role: r.known_issue for r in results})
        results = label_failure(item, rep, results)  # after settle: an xfail is no failure
        self._open_recorder()
        self.recorder.report(item.nodeid, rep, results)
        return rep

    def _merge(
        self, item: pytest.Item, rep: pytest.TestReport, phase: str, own: RoleResult
    ) -> list[RoleResult]:
        """Fold the peers' outcomes of ``phase`` into ``rep``; return every role's result."""
        peers = self.leader.gather(phase)
        fold_into(self.me, item, rep, own, peers)
        return [own, *peers]

    def _report_never_joined(self, rep: pytest.TestReport, own: RoleResult) -> list[RoleResult]:
        """The setup error of a test whose peers never joined: one line, no traceback."""
        never = self.leader.never_joined
        assert never is not None
        cause = str(never)
        rep.longrepr = f"kvtest: {cause} (environment)"
        mine = RoleResult(self.me, "failed", "join", cause, secondary=True, duration=own.duration)
        absent = [RoleResult(r, "failed", "join", cause, failure=ENVIRONMENT) for r in never.roles]
        return [mine, *absent]

    def _open_recorder(self) -> None:
        if self.recorder.writer is None:
            run_id = self.leader.run_id or time.strftime("local-%Y%m%d-%H%M%S")
            backend = self.leader.backend_name or self.settings.backend
            self.recorder.open(run_id, fingerprint(backend, list(self.settings.device_ids) or None))

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.exitstatus = int(session.exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        writer = self.recorder.writer
        if writer is not None and self.kv_items:
            tests = {k: v for k, v in writer.tests.items() if k in self.kv_items}
            points = {
                nodeid: getattr(getattr(item, "callspec", None), "params", {}).get("point")
                for nodeid, item in self.kv_items.items()
            }
            write_summary(terminalreporter, tests, points, writer.path)
        cluster = self.leader.cluster
        if cluster is None:
            return
        codes = ", ".join(f"{r}: exit {c}" for r, c in cluster.returncodes().items())
        terminalreporter.write_sep("-", "kvtest")
        terminalreporter.write_line(f"kvtest: the other roles' logs are in {cluster.logdir} ({codes})")
