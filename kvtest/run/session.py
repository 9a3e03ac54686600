"""The session plugins: :class:`LeaderSession` in p0 and :class:`FollowerSession` in every other role.

Lifecycle. The leader runs pytest's loop; when the collected tests need peers it opens the store (and
in local mode starts every other role here), handshakes, announces each multi-role test before it
runs and merges the peers' outcomes into its report, then announces the end and collects the
followers' goodbyes. A follower replaces pytest's loop: it joins, handshakes, runs each announced
test and publishes its outcome, and leaves when the leader announces the end.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
import uuid
from collections.abc import Generator
from contextlib import nullcontext
from typing import Any

import pytest

from kvtest.host.fingerprint import fingerprint
from kvtest.results.artifacts import RoleArtifacts
from kvtest.results.known_issues import expectation, settle
from kvtest.results.recording import RunRecorder, transfer_properties
from kvtest.results.report import write_summary
from kvtest.results.results import RoleInfo
from kvtest.run.failure import ENVIRONMENT, PeerNeverJoined, classify, resolve
from kvtest.run.launcher import LocalCluster, start_roles
from kvtest.run.merge import MergedRepr, fold
from kvtest.run.messages import (
    IDLE_LIMIT,
    RESULT_SHAPE,
    STACK_KEYS,
    Handshake,
    Hello,
    RoleResult,
)
from kvtest.run.rendezvous import (
    Heartbeat,
    PeerDead,
    PeerFailed,
    PeerWatch,
    PortInUse,
    RendezvousError,
    RendezvousLost,
    RunStore,
    Shape,
    TokenMismatch,
    check_shape,
    keys,
    open_store,
    reconnect,
)
from kvtest.run.scope import TestScope, test_seed
from kvtest.run.signing import MAKE_ONE, TOKEN_ENV, Seal, Token, is_sealed, open_seal, seal, token_from
from kvtest.run.threads import ThreadBudget
from kvtest.run.threads import apply as apply_threads
from kvtest.run.threads import plan as plan_threads
from kvtest.run.topology import Topology
from kvtest.run.watchdog import Watchdog
from kvtest.settings import Rendezvous, Settings
from kvtest.state import chosen_backend, marker_settings

__all__ = ["FollowerSession", "LeaderSession", "KV_ITEM", "item_topology", "item_timeout"]

KV_FIXTURE = "kv"
KV_ITEM = pytest.StashKey[Topology]()
RESULT_PHASES = {"setup": "call", "call": "call", "teardown": "teardown"}
#: what p0's announcement of a test must hold for a follower to run it
ITEM_SHAPE: Shape = {"nodeid": str, "roles": list, "next": dict}


def item_topology(item: pytest.Item) -> Topology:
    return item.stash[KV_ITEM]


def item_timeout(item: pytest.Item, default: float) -> float:
    return float(marker_settings(item).get("timeout", default))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _failure_text(rep: pytest.TestReport) -> tuple[str, str]:
    """(one-line message, full text) of a failed or skipped report."""
    if rep.skipped and isinstance(rep.longrepr, tuple):
        return str(rep.longrepr[2]), ""
    crash = getattr(rep.longrepr, "reprcrash", None)
    message = crash.message if crash is not None else str(rep.longrepr).strip().splitlines()[-1:]
    return " ".join(str(message).split()) or "failed", rep.longreprtext


class _Base:
    """What both sides share: the store, the heartbeat, the current test scope."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.me = settings.role_name
        self.store: RunStore | None = None
        self.heartbeat: Heartbeat | None = None
        self.watchdog: Watchdog | None = None
        self._dog_watch: PeerWatch | None = None
        self._dog_store: RunStore | None = None
        self.scope: TestScope | None = None
        self.topology = settings.topology or Topology(1, 1)
        self.all_ids: list[str] = []
        self.collected: list[pytest.Item] = []
        self.kv_items: dict[str, pytest.Item] = {}
        self.backend_name = ""
        self.backend_why = ""
        self.token = token_from(settings.token_file, settings.sources.get("token_file", "default"))
        self.exitstatus: int = 0
        self._stack: tuple[str, dict[str, str]] | None = None
        self.artifacts: RoleArtifacts | None = None
        if settings.artifacts is not None:
            self.artifacts = RoleArtifacts(config, settings.artifacts, self.me, settings.run_id)

    # -- collection -------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Runs before -k/-m deselection: the digest covers what was collected, not what was selected.
        self.collected = list(items)
        self.all_ids = [item.nodeid for item in items]
        self.kv_items = {item.nodeid: item for item in items if KV_ITEM in item.stash}

    # -- the store --------------------------------------------------------------------------------

    def _start_heartbeat(self, rdv: Rendezvous, port: int, keep: tuple[str, str] | None = None) -> None:
        assert self.store is not None
        hb_store = reconnect(rdv, port, self.settings.join_timeout, self.settings.dead_after)
        self.heartbeat = Heartbeat(hb_store, self.store.key(keys.heartbeat(self.me)), keep=keep).start()
        if self.store.address is None:  # this role hosts the store: it watches its peers' heartbeats
            dog_store = reconnect(rdv, port, self.settings.join_timeout, self.settings.dead_after)
            cluster: LocalCluster | None = getattr(self, "cluster", None)
            exited = cluster.exited if cluster is not None else None
            self._dog_watch = PeerWatch(dog_store, self.settings.dead_after, exited)
            # the watchdog's own view of the run (a store client is not shared between threads)
            self._dog_store = RunStore(
                dog_store, self.store.run_id, self.me, self._dog_watch, token=self.token
            )
        self.watchdog = Watchdog(self._peers_lost).start()

    def _peers_lost(self) -> BaseException | None:
        """The watchdog's question, while a test body runs: are this test's peers gone? The store's
        host asks their heartbeats; a role that reaches the store over the network asks whether it
        still makes round trips to it (the heartbeat thread's last one)."""
        scope, store = self.scope, self.store
        if scope is None or store is None or store.lost is not None:
            return None
        peers = [role for role in scope.roles if role != self.me]
        if self._dog_watch is not None and self._dog_store is not None:
            dog = self._dog_store

            def step(role: str) -> str | None:  # the step the peer announced last, read now
                try:
                    value = dog.read(keys.step(scope.seq, role))
                except RendezvousError:
                    return None
                return None if value is None else str(value)

            self._dog_watch.describe_step_with(step)
            try:
                self._dog_watch.check(peers)
            except PeerDead as exc:
                return exc
            return None
        silent = time.monotonic() - max(self._last_round_trip(), store.last_ok)
        if silent <= self.settings.dead_after + 0.5:
            return None
        lost = store._lost(f"no round trip to the store for {silent:.1f}s")
        store.lost = lost
        return lost

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        if self.watchdog is None or item.nodeid not in self.kv_items:
            return (yield)
        self.watchdog.arm()
        try:
            return (yield)
        finally:
            self.watchdog.disarm()

    def _last_round_trip(self) -> float:
        return self.heartbeat.last_ok if self.heartbeat is not None else 0.0

    def _unauthenticated(self, rdv: Rendezvous) -> str | None:
        """The header's warning when strangers on the network could write to this run's store."""
        if self.token is not None or rdv.scheme != "tcp" or _is_loopback(rdv.host):
            return None
        return (
            f"kvtest: WARNING: the rendezvous {rdv} is unauthenticated: anyone who reaches it can read "
            "the run id and write results, barriers and aborts; give every role the same secret with "
            f"--kv-token-file PATH (or {TOKEN_ENV}), e.g. {MAKE_ONE}"
        )

    def _hello(self) -> Hello:
        return Hello.make(
            self.me, self.backend_name, self.topology, self.settings.seed, self.settings.profile,
            self.all_ids, fingerprint=self._fingerprint(),
            require_same_stack=self.settings.require_same_stack,
        )

    def _fingerprint(self) -> dict[str, str]:
        """This role's environment fingerprint, as its hello carries it (file reads only: ~3 ms), read
        once per backend name: the artifacts log may ask before the backend is resolved."""
        backend = self.backend_name or self.settings.backend
        if self._stack is None or self._stack[0] != backend:
            device = self.settings.device_id()
            self._stack = (backend, fingerprint(backend, None if device is None else [device]))
        return self._stack[1]

    def _begin_artifacts(self, run_id: str) -> None:
        """Now that the run id is known: this role's artifacts folder, and its stack in the log."""
        if self.artifacts is None:
            return
        self.artifacts.begin(run_id)
        stack = self._fingerprint()
        facts = ", ".join(f"{k} {stack.get(k, 'absent')}" for k in STACK_KEYS)
        rdv = self.settings.rendezvous
        where = rdv.describe() if rdv is not None else "local mode"
        self.artifacts.write(f"kvtest: {self.me} on {stack.get('host')}, run {run_id} ({where}); {facts}")

    def _resolve_backend(self) -> None:
        backend, self.backend_why = chosen_backend(self.config)
        self.backend_name = backend.name

    def _local_processes(self) -> int | None:
        """This run's processes on this host: every role in local mode, the launcher's count when one
        started us, unknown for a role started by hand."""
        if self.settings.local_mode:
            return len(self.topology.roles)
        return self.settings.launch.local_size if self.settings.launch is not None else None

    def _thread_budget(self, processes: int | None) -> ThreadBudget:
        """Plan and apply this process's torch threads (``processes``: this run's on this host)."""
        s = self.settings
        budget = plan_threads(s.threads, s.sources.get("threads", "default"), processes=processes)
        apply_threads(budget)
        return budget

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # registered now, after this session: its runtestloop wrapper is then the outer one and logs
        # why the loop stopped (a refused handshake, a lost peer) before pytest prints it
        if self.artifacts is not None:
            self.artifacts.session = session
            self.config.pluginmanager.register(self.artifacts, "kvtest-artifacts")

    def _write(self, line: str) -> None:
        if self.artifacts is not None:
            self.artifacts.write(line)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def _unreachable(self) -> bool:
        """Whether the run stopped because the store or a peer could not be reached."""
        return self.store is not None and self.store.lost is not None

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._unreachable() and not hasattr(config, "workerinput"):  # (xdist wants its worker back)
            # Every report is written. What is left is teardown: NIXL/UCX endpoints to a host that
            # does not answer, and the interpreter's own (measured: 6-7 s on a loaded 2-core host).
            # A role cut off from its run leaves now instead.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.exitstatus)

    def _say(self, line: str) -> None:
        """A line on the terminal now, also from inside a test (output capture is paused for it)."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
            self._write(line)

    def new_scope(self, seq: int, item: pytest.Item, roles: list[str]) -> TestScope:
        assert self.store is not None
        scope = TestScope(
            self.store, seq, self.me, roles, self.topology, item_timeout(item, self.settings.timeout)
        )
        scope.seed = test_seed(self.settings.seed, item.nodeid)
        scope.metrics.clock.activate()  # i27: phase costs; the rendezvous waits are phase "wait"
        scope.barrier = scope.metrics.clock.timed("wait", scope.barrier)  # type: ignore[method-assign]
        scope.fetch = scope.metrics.clock.timed("wait", scope.fetch)  # type: ignore[method-assign]
        self.scope = scope
        if self.store.watch is not None:
            self.store.watch.describe_step_with(scope.peer_step)
        return scope

    # -- reports ----------------------------------------------------------------------------------

    def _own_result(
        self, item: pytest.Item, rep: pytest.TestReport, call: pytest.CallInfo[None]
    ) -> RoleResult:
        outcome = rep.outcome
        message, details = _failure_text(rep) if outcome != "passed" else ("", "")
        secondary = call.excinfo is not None and isinstance(call.excinfo.value, (PeerFailed, PeerDead))
        if secondary and call.excinfo is not None:
            message = str(call.excinfo.value)
        step = self.scope.current_step if self.scope is not None else rep.when
        records = self.scope.metrics.records if self.scope is not None else []
        failed = outcome == "failed" and not secondary  # a secondary one takes the primary's class
        exc = call.excinfo.value if call.excinfo is not None else None

        return RoleResult(
            self.me,
            outcome,
            step,
            message,
            details,
            secondary=secondary,
            duration=rep.duration,
            transfers=tuple(dict(r.to_json()) for r in records),
            failure=classify(exc) if failed else None,
            known_issue=expectation(item) if rep.when == "call" else None,
            phases=self.scope.metrics.clock.rounded() if self.scope is not None else None,
        )

    @staticmethod
    def _label_failure(
        item: pytest.Item, rep: pytest.TestReport, results: list[RoleResult]
    ) -> list[RoleResult]:
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

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        # before any fixture finalizer: a failure from here on is reported at step 'teardown'
        if self.scope is not None and item.nodeid in self.kv_items:
            try:
                self.scope.begin_teardown()
            except RendezvousError:
                pass

    def _abort_on_failure(self, rep: pytest.TestReport, result: RoleResult) -> None:
        if self.scope is None or rep.when == "teardown" or rep.passed:
            return
        try:
            self.scope.abort(result.message, skipped=rep.skipped)
        except RendezvousError:
            pass


class LeaderSession(_Base):
    """p0: hosts the store, starts the local roles, announces tests, merges outcomes."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        super().__init__(config, settings)
        self.cluster: LocalCluster | None = None
        self.active = False
        self.seq = 0
        self.dead: dict[str, str] = {}
        self.run_id = ""
        self.recorder = RunRecorder(settings.results)
        #: set when roles never joined: every selected multi-role test is then an environment error
        self.never_joined: PeerNeverJoined | None = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        selected = any(item.nodeid in self.kv_items for item in session.items)
        if selected and not session.config.option.collectonly:
            self._start(session)
        try:
            return (yield)
        finally:
            self._finish()

    def _session_topology(self, session: pytest.Session) -> Topology:
        if self.settings.topology is not None or not self.settings.local_mode:
            return self.topology
        needed = Topology(1, 1)
        for item in session.items:
            if item.nodeid in self.kv_items:
                needed = needed.union(item_topology(item))
        return needed

    def _start(self, session: pytest.Session) -> None:
        s = self.settings
        self.topology = self._session_topology(session)
        if s.local_mode:  # a --device-id list that does not fit the roles: refused before anything starts
            s.local_device_ids(self.topology.roles)
        self.run_id = s.run_id or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        if self.artifacts is not None:
            self._begin_artifacts(self.run_id)
            if self.recorder.path is None:
                self.recorder.path = self.artifacts.results_path(self.run_id)
        rdv = s.rendezvous or Rendezvous("tcp", host="127.0.0.1", port=0)
        if s.local_mode and self.token is None:
            self.token = Token.new()  # handed to the children in the environment
        hosting = s.hosts_store  # local mode: p0
        try:
            raw, port = open_store(
                rdv, host=hosting, timeout=s.join_timeout, dead_after=None if hosting else s.dead_after
            )
        except PortInUse as exc:
            raise pytest.UsageError(f"kvtest: --rendezvous {rdv}: {exc}") from None
        except RendezvousError as exc:
            raise pytest.UsageError(f"kvtest: {self.me}: {exc}") from None
        self._resolve_backend()
        budget = self._thread_budget(self._local_processes())
        if s.local_mode:
            rdv = Rendezvous("tcp", host=rdv.host, port=port)
            secrets = {TOKEN_ENV: self.token.text()} if self.token else None
            self.cluster = start_roles(
                self.config, s, self.me, self.topology, rdv, self.run_id, secrets, budget
            )
        watch = PeerWatch(raw, s.dead_after, self.cluster.exited if self.cluster else None)
        address = None if hosting or rdv.scheme != "tcp" else (rdv.host, port)
        self.store = RunStore(
            raw, self.run_id, self.me, watch, token=self.token, address=address, warn=self._say,
            alive=self._last_round_trip, host_name=s.store_host_name(),
        )
        announcement = (
            seal(self.token, self.run_id, keys.CURRENT_RUN, self.run_id) if self.token else self.run_id
        )
        raw.set(keys.CURRENT_RUN, announcement)
        self._start_heartbeat(rdv, port, keep=(keys.CURRENT_RUN, announcement))
        self.active = True
        where = (
            f"local mode, logs in {self.cluster.logdir}" if self.cluster else f"rendezvous {rdv.describe()}"
        )
        signed = f", signed with token {self.token.id}" if self.token else ""
        self._write(
            f"kvtest: run {self.run_id}, topology {self.topology} ({where}{signed}), backend "
            f"{self.backend_name} ({self.backend_why})"
        )
        warning = self._unauthenticated(rdv)
        if warning:
            self._write(warning)
        self._write(f"kvtest: {budget.describe()}")
        handshake = Handshake(self.store, self._hello(), self.topology.roles, s.join_timeout)
        try:
            handshake.claim()
            handshake.lead(
                exited=self.cluster.exited if self.cluster else None, grace=s.dead_after, where=rdv.describe()
            )
        except PeerNeverJoined as exc:
            self._never_joined(exc)
        except BaseException:
            # no heartbeat thread may be inside the store when the process exits: torch aborts it
            # ("terminate called without an active exception")
            self.watchdog.stop() if self.watchdog else None
            self.heartbeat.stop() if self.heartbeat else None
            self._note_roles(handshake, refused=True)
            raise
        self._note_roles(handshake, refused=False)

    def _note_roles(self, handshake: Handshake, refused: bool) -> None:
        """Every role's host and fingerprint into the results file; a stack difference in the header."""
        if len(handshake.hellos) < 2 and not refused:
            return
        roles = {
            role: RoleInfo(host=h.host, pid=h.pid, fingerprint=dict(h.fingerprint))
            for role, h in handshake.hellos.items()
        }
        self.recorder.set_roles(roles, handshake.stack)
        if handshake.stack and not refused:
            self._write("kvtest: stack differs between roles: " + "; ".join(handshake.stack))
        if refused and self.recorder.path is not None:
            self._open_recorder()  # the refused run's file says who took part, on which stack

    def _never_joined(self, exc: PeerNeverJoined) -> None:
        """Not a usage error: the run goes on, and each multi-role test errors at setup with ``exc``."""
        self.watchdog.stop() if self.watchdog else None
        self.heartbeat.stop() if self.heartbeat else None
        self.active = False
        self.never_joined = exc
        self._write(f"kvtest: {exc}: every test that needs it errors at setup (an environment failure)")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if self.never_joined is not None and item.nodeid in self.kv_items:
            if not item.get_closest_marker("skip"):
                raise self.never_joined

    # -- per test ---------------------------------------------------------------------------------

    def _next_for_roles(self, nextitem: pytest.Item | None) -> dict[str, str | None]:
        """What each role runs next, so its fixtures of wider scope survive between tests.

        Only pytest's own ``nextitem`` is certain (under xdist a worker runs a subset of the items);
        a role with no next test here tears everything down.
        """
        if nextitem is None or nextitem.nodeid not in self.kv_items:
            return {role: None for role in self.topology.roles}
        involved = item_topology(nextitem).roles
        return {role: nextitem.nodeid if role in involved else None for role in self.topology.roles}

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, object, object]:
        if not self.active or item.nodeid not in self.kv_items or item.get_closest_marker("skip"):
            return (yield)
        assert self.store is not None
        roles = item_topology(item).roles
        seq = self.seq
        self.seq += 1
        try:
            announcement = {"nodeid": item.nodeid, "roles": roles, "next": self._next_for_roles(nextitem)}
            self.store.set(keys.item(seq), announcement)
        except RendezvousError:
            pass  # the store is gone (hosted elsewhere under a launcher): the test fails on its first step
        self.new_scope(seq, item, roles)
        try:
            return (yield)
        finally:
            self.scope = None
            if self.dead:
                item.session.shouldfail = "kvtest: " + "; ".join(self.dead.values()) + ": stopping the run"
            elif self.store.lost is not None:
                item.session.shouldfail = f"kvtest: {self.store.lost}: stopping the run"

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        own = self._own_result(item, rep, call)
        results = [own]
        if call.excinfo is not None and call.excinfo.value is self.never_joined:
            results = self._report_never_joined(rep, own)
        elif self.scope is not None and item.nodeid in self.kv_items:
            self._abort_on_failure(rep, own)
            if call.excinfo is not None and isinstance(call.excinfo.value, PeerDead):
                self.dead.setdefault(call.excinfo.value.role, str(call.excinfo.value))
            if rep.when == "call" or (rep.when == "setup" and not rep.passed):
                results = self._merge(item, rep, "call", own)
                props = transfer_properties(results)
                rep.user_properties.extend(props)
                item.user_properties.extend(props)
            elif rep.when == "teardown":
                results = self._merge(item, rep, "teardown", own)
        # a known upstream issue: strict xfail when every role that expects it showed its symptom
        settle(item, rep, decides=True, roles={r.role: r.known_issue for r in results})
        results = self._label_failure(item, rep, results)  # after settle: an xfail is no failure
        self._record(item.nodeid, rep, results)
        return rep

    def _report_never_joined(self, rep: pytest.TestReport, own: RoleResult) -> list[RoleResult]:
        """The setup error of a test whose peers never joined: one line, no traceback."""
        assert self.never_joined is not None
        cause = str(self.never_joined)
        rep.longrepr = f"kvtest: {cause} (environment)"
        mine = RoleResult(self.me, "failed", "join", cause, secondary=True, duration=own.duration)
        roles = self.never_joined.roles
        absent = [RoleResult(r, "failed", "join", cause, failure=ENVIRONMENT) for r in roles]
        return [mine, *absent]

    def _record(self, nodeid: str, rep: pytest.TestReport, results: list[RoleResult]) -> None:
        self._open_recorder()
        self.recorder.report(nodeid, rep, results)

    def _open_recorder(self) -> None:
        if self.recorder.writer is None:
            run_id = self.run_id or time.strftime("local-%Y%m%d-%H%M%S")
            self.recorder.open(
                run_id,
                fingerprint(
                    self.backend_name or self.settings.backend, list(self.settings.device_ids) or None
                ),
            )

    def _gather(self, phase: str) -> list[RoleResult]:
        assert self.scope is not None and self.store is not None
        scope = self.scope
        results = []
        for role in scope.peers:
            if role in self.dead:
                if phase != "teardown":  # a death is reported once, with the call
                    results.append(RoleResult(role, "failed", "", self.dead[role], secondary=True, died=True))
                continue
            try:
                data = self.store.wait(
                    keys.result(scope.seq, phase, role),
                    what=f"{role}'s {phase} outcome",
                    timeout=4 * scope.timeout,
                    peers=[role],
                    shape=RESULT_SHAPE,
                )
                results.append(RoleResult.from_json(data))
            except PeerDead as exc:
                self.dead[role] = str(exc)
                if phase != "teardown" or not scope.peer_step(role):
                    results.append(RoleResult(role, "failed", exc.step or "", str(exc), died=True))
            except RendezvousError as exc:
                results.append(
                    RoleResult(role, "failed", scope.peer_step(role) or "?", str(exc), failure=classify(exc))
                )
        return results

    def _merge(
        self, item: pytest.Item, rep: pytest.TestReport, phase: str, own: RoleResult
    ) -> list[RoleResult]:
        """Fold the peers' outcomes of ``phase`` into ``rep``; return every role's result."""
        peers = self._gather(phase)
        self._fold(item, rep, own, peers)
        return [own, *peers]

    def _fold(
        self, item: pytest.Item, rep: pytest.TestReport, own: RoleResult, peers: list[RoleResult]
    ) -> None:
        folded = fold(self.me, own, rep.outcome, peers)
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

    # -- the end ----------------------------------------------------------------------------------

    def _finish(self) -> None:
        if not self.active:
            if self.cluster is not None:
                self.cluster.stop(grace=5)
            return
        self.active = False
        assert self.store is not None
        try:
            self.store.set(keys.item(self.seq), {"end": True})
            for role in self.topology.roles:
                if role != self.me and role not in self.dead:
                    self.store.wait(keys.bye(role), what=f"{role} to leave", timeout=30, peers=[role])
        except RendezvousError as exc:
            self._write(f"kvtest: {exc}")
        if self.cluster is not None:
            self.cluster.stop(grace=20)
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if not self.settings.hosts_store:
            try:  # the role hosting the store (a launcher's rank 0) may leave now
                self.store.set(keys.CLOSED, True)
            except RendezvousError:
                pass

    def _unreachable(self) -> bool:
        return bool(self.dead) or super()._unreachable()

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
        if self.cluster is None:
            return
        codes = ", ".join(f"{r}: exit {c}" for r, c in self.cluster.returncodes().items())
        terminalreporter.write_sep("-", "kvtest")
        terminalreporter.write_line(f"kvtest: the other roles' logs are in {self.cluster.logdir} ({codes})")


class FollowerSession(_Base):
    """Every role but p0: joins the run, runs exactly the announced tests, reports each outcome."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
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
            failed = self._follow(session)
        except RendezvousError as exc:
            # p0 hosts the store: without it (or with garbage in it) there is nobody to follow.
            step = f" ({self.me}'s last step: {self._last_step})" if self._last_step else ""
            pytest.exit(f"kvtest: {exc}{step}: stopping", returncode=pytest.ExitCode.TESTS_FAILED)
        finally:
            self._leave(failed)
        return True

    def _join(self) -> None:
        s = self.settings
        assert s.rendezvous is not None
        self._resolve_backend()
        self._write(f"kvtest: {self.me}: {self._thread_budget(self._local_processes()).describe()}")
        hosting = s.hosts_store
        try:
            raw, port = open_store(
                s.rendezvous,
                host=hosting,
                timeout=s.join_timeout,
                dead_after=None if hosting else s.dead_after,
            )
            current = self._current_run(raw)
        except RendezvousError as exc:
            raise pytest.UsageError(f"kvtest: {self.me}: {exc}") from None
        if s.run_id is not None and current != s.run_id:
            raise pytest.UsageError(
                f"kvtest: {self.me}: the rendezvous {s.rendezvous} belongs to run {current!r}, not "
                f"{s.run_id!r} (from {s.sources.get('run_id')}); give the leader's run id or none"
            )
        self._begin_artifacts(current)
        watch = PeerWatch(raw, s.dead_after)
        address = (s.rendezvous.host, port) if s.rendezvous.scheme == "tcp" and not hosting else None
        self.store = RunStore(
            raw, current, self.me, watch, token=self.token, address=address, warn=self._say,
            alive=self._last_round_trip, host_name=s.store_host_name(),
        )
        self._start_heartbeat(s.rendezvous, port)
        warning = self._unauthenticated(s.rendezvous)
        if warning:
            self._write(warning)
        handshake = Handshake(self.store, self._hello(), self.topology.roles, s.join_timeout)
        try:
            handshake.claim()
            handshake.follow()
        except (RendezvousError, pytest.UsageError) as exc:
            self.watchdog.stop() if self.watchdog else None
            self.heartbeat.stop() if self.heartbeat else None  # as in LeaderSession._start
            if isinstance(exc, pytest.UsageError):
                raise
            raise pytest.UsageError(f"kvtest: {self.me}: {exc}") from None
        if handshake.stack:
            self._write(f"kvtest: {self.me}: stack differs between roles: " + "; ".join(handshake.stack))

    def _current_run(self, raw: Any) -> str:
        """The run p0 announced. On a shared file an older run's id may linger: wait for ours.

        With a token the announcement must be signed with it. One signed with another token (or
        none, for longer than --kv-dead-after: p0 puts its own back at once) means p0 and this role
        were given different tokens: this role leaves its hello for p0 to see, and refuses to run.
        """
        s = self.settings
        assert s.rendezvous is not None
        deadline = time.monotonic() + s.join_timeout
        unsigned_since: float | None = None
        while True:
            try:
                stored = raw.get(keys.CURRENT_RUN) if raw.check([keys.CURRENT_RUN]) else None
            except Exception as exc:
                raise RendezvousLost(f"lost {s.rendezvous}: {str(exc).splitlines()[0]}") from None
            if stored is not None:
                current, verdict, their_id = self._open_announcement(stored)
                if current is not None and (s.rendezvous.scheme == "tcp" or current == s.run_id):
                    if verdict is Seal.VALID:
                        return current
                    if unsigned_since is None and verdict is Seal.UNSIGNED:
                        self._say(
                            f"kvtest: {self.me}: a value under {keys.CURRENT_RUN!r} is not signed with "
                            "this run's token: someone else is writing to this rendezvous"
                        )
                    unsigned_since = unsigned_since or time.monotonic()
                    if verdict is Seal.OTHER_TOKEN or time.monotonic() - unsigned_since > s.dead_after:
                        self._refuse_token(raw, current, their_id)
            if time.monotonic() > deadline:
                raise RendezvousLost(
                    f"no run {s.run_id or ''} was announced at {s.rendezvous} within {s.join_timeout:g}s: "
                    "is p0 (the leader) running with the same --rendezvous?"
                )
            time.sleep(0.05)

    def _open_announcement(self, stored: bytes) -> tuple[str | None, Seal, str | None]:
        """(run id, how it is signed, the signer's token id) of p0's announcement."""
        try:
            data = json.loads(stored)
        except (UnicodeDecodeError, ValueError):
            data = None
        if not is_sealed(data):
            try:
                text = stored.decode()
            except UnicodeDecodeError:
                return None, Seal.BAD, None
            return text, (Seal.UNSIGNED if self.token else Seal.VALID), None
        inner = data.get("json") if isinstance(data.get("json"), str) else "null"
        try:
            claimed = json.loads(inner)
        except ValueError:
            claimed = None
        current = claimed if isinstance(claimed, str) else None
        if self.token is None:
            return current, Seal.OTHER_TOKEN, data.get("token")
        verdict, _, their_id = open_seal(self.token, current or "", keys.CURRENT_RUN, data)
        if verdict is Seal.BAD:
            self._say(
                f"kvtest: {self.me}: a value under {keys.CURRENT_RUN!r} is not signed with this run's "
                "token: someone else is writing to this rendezvous"
            )
            return None, verdict, their_id
        return current, verdict, their_id

    def _refuse_token(self, raw: Any, run_id: str, their_id: str | None) -> None:
        """Leave a hello in the announced run, so p0 says it too, and stop with a usage error."""
        store = RunStore(raw, run_id, self.me, token=self.token)
        try:
            store.set(keys.hello(self.me), self._hello().to_json())
        except RendezvousError:
            pass
        mine = f"this role's is {self.token.id}" if self.token else "this role has none"
        theirs = f"signed with token {their_id}" if their_id else "not signed"
        raise TokenMismatch(
            f"the run {run_id} at {self.settings.rendezvous} is {theirs} ({mine}): p0 was started with "
            f"another token; give every role the same --kv-token-file (or {TOKEN_ENV})"
        )

    def _follow(self, session: pytest.Session) -> int:
        assert self.store is not None
        seq = 0
        while True:
            announced = self.store.wait(
                keys.item(seq), what="p0's next test", timeout=IDLE_LIMIT, peers=["p0"], shape={}
            )
            if announced.get("end") is True:
                return session.testsfailed
            check_shape(announced, ITEM_SHAPE, self.store.key(keys.item(seq)), self.me)
            if self.me in announced["roles"]:
                self._run_announced(session, seq, announced)
            seq += 1

    def _run_announced(self, session: pytest.Session, seq: int, announced: dict[str, Any]) -> None:
        assert self.store is not None
        item = self.by_id.get(announced["nodeid"])
        if item is None:
            missing = RoleResult(
                self.me,
                "failed",
                "collect",
                f"{self.me} did not collect {announced['nodeid']} (different files or kvtest version)",
            )
            self.store.set(keys.result(seq, "call", self.me), missing.to_json())
            self.store.set(keys.result(seq, "teardown", self.me), RoleResult(self.me, "passed").to_json())
            return
        next_id = announced["next"].get(self.me)
        self.ran_any = True
        scope = self.new_scope(seq, item, announced["roles"])
        try:
            item.ihook.pytest_runtest_protocol(
                item=item, nextitem=self.by_id.get(next_id) if next_id else None
            )
        finally:
            self._last_step = f"{scope.current_step!r} in {item.nodeid}"
            self.scope = None

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        rep = yield
        if self.scope is None:
            return rep
        own = self._own_result(item, rep, call)
        self._abort_on_failure(rep, own)
        if rep.when == "call" or (rep.when == "setup" and not rep.passed) or rep.when == "teardown":
            try:
                self.store.set(
                    keys.result(self.scope.seq, RESULT_PHASES[rep.when], self.me), own.to_json()
                ) if self.store else None
            except RendezvousError:
                pass
        settle(item, rep, decides=False)  # p0 reported the raw outcome above and decides the test
        self._label_failure(item, rep, [own])  # this role's own JUnit XML (p0's has the merged one)
        return rep

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        # The follower's own -m/-k may deselect what p0 announced; it ran p0's tests all the same.
        if self.ran_any and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED if session.testsfailed else pytest.ExitCode.OK
        self.exitstatus = int(session.exitstatus)

    def _leave(self, failed: int) -> None:
        if self.store is not None:
            try:
                self.store.set(keys.bye(self.me), {"failed": failed})
                if self.settings.hosts_store:  # the others still use the store this process hosts
                    self.store.wait(keys.CLOSED, what="p0 to close the run", timeout=30, peers=["p0"])
            except RendezvousError:
                pass
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.heartbeat is not None:
            self.heartbeat.stop(wait=not self._unreachable())
