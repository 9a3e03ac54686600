"""The hook adapters' shared base, and the hook order the protocol relies on (stated here once;
``tests/harness/test_hook_order.py`` asserts it).

The protocol itself is in plain objects: :class:`kvtest.run.leader.Leader` in p0 and
:class:`kvtest.run.follower.Follower` in every other role. :class:`LeaderSession`
(:mod:`kvtest.run.leader_session`) and :class:`FollowerSession` (:mod:`kvtest.run.follower_session`)
adapt them to pytest's hooks, and translate kvtest's :class:`RunRefused` into ``pytest.UsageError``.

Hook order (pluggy calls wrappers outermost first: ``tryfirst`` before plain, and among equals the
plugin registered last first):

=====================================  ==========================================================
hook                                   what kvtest relies on
=====================================  ==========================================================
pytest_configure                       ``kvtest.plugin`` registers one session as ``kvtest-session``
pytest_collection_modifyitems          the session's is ``tryfirst``: it sees every collected test
                                       before -k/-m deselect, so both sides' digests agree
pytest_sessionstart                    the session registers ``kvtest-artifacts`` after itself:
                                       artifacts' ``pytest_runtestloop`` wrapper (``tryfirst`` too)
                                       is then the outer one and logs why the loop stopped
pytest_runtestloop                     leader: a ``tryfirst`` wrapper (open before, finish after);
                                       follower: ``tryfirst``, replaces pytest's loop
pytest_runtest_protocol                leader: a ``tryfirst`` wrapper announces the test first
pytest_runtest_setup                   leader: ``tryfirst``, a peer that never joined errors here
pytest_runtest_teardown                ``tryfirst``: the scope's step is 'teardown' before any
                                       fixture finalizer runs
pytest_runtest_makereport              the session's wrapper is outer to ``kvtest.plugin``'s (it
                                       registered later): the plugin marks a failed body first,
                                       the session then merges every role and settles known issues
pytest_unconfigure                     the session's is ``trylast`` (it may ``os._exit`` when the
                                       run lost its peers); artifacts' is ``tryfirst`` (its files
                                       are complete before that)
=====================================  ==========================================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from contextlib import nullcontext
from typing import TypeVar

import pytest

from kvtest.backends.protocol import Backend
from kvtest.results.artifacts import RoleArtifacts
from kvtest.roles.topology import Topology
from kvtest.run.errors import RendezvousError, RunRefused
from kvtest.run.member import Member
from kvtest.run.messages import STACK_KEYS, RoleResult
from kvtest.run.scope import TestScope
from kvtest.run.touch_ahead import comes_first, touches_after
from kvtest.settings import Settings
from kvtest.state import chosen_backend, marker_settings

__all__ = ["HOOK_ORDER", "KV_FIXTURE", "KV_ITEM", "SessionHooks", "item_timeout", "item_topology"]

M = TypeVar("M", bound=Member)
KV_FIXTURE = "kv"
#: the fixture that makes LLMDataDists: a session whose tests use it has the backend warm up
KV_DATADIST = "datadist"
KV_ITEM = pytest.StashKey[Topology]()
#: the memory one side of the item's case holds, cache or pools (kvtest.cases.device_bytes; set by the plugin)
KV_DEVICE_BYTES = pytest.StashKey[int]()
#: the longest a role whose tests come first waits for its memory touched ahead before the first test
TOUCH_AHEAD_WAIT_S = 30.0
#: (hook, plugin name, how it is marked) for the orderings above that a test can check
HOOK_ORDER = (
    ("pytest_collection_modifyitems", "kvtest-session", "tryfirst"),
    ("pytest_runtestloop", "kvtest-artifacts", "outer wrapper"),
    ("pytest_runtestloop", "kvtest-session", "inner wrapper"),
    ("pytest_runtest_makereport", "kvtest-session", "outer wrapper"),
    ("pytest_runtest_makereport", "kvtest", "inner wrapper"),
    ("pytest_unconfigure", "kvtest-artifacts", "tryfirst"),
    ("pytest_unconfigure", "kvtest-session", "trylast"),
)


def item_topology(item: pytest.Item) -> Topology:
    return item.stash[KV_ITEM]


def makes_datadist(item: pytest.Item) -> bool:
    """The test uses the ``datadist`` fixture: it makes an LLMDataDist."""
    return KV_DATADIST in getattr(item, "fixturenames", ())


def item_timeout(item: pytest.Item, default: float) -> float:
    return float(marker_settings(item).get("timeout", default))


class SessionHooks:
    """What both sides' adapters share: collection, the artifacts plugin, the watchdog around a
    test body, the step at teardown, the last exit."""

    member: Member

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.me = settings.role_name
        self.collected: list[pytest.Item] = []
        self.kv_items: dict[str, pytest.Item] = {}
        self.selected: list[pytest.Item] = []  # after -k/-m deselection
        self.exitstatus: int = 0
        self._touching: Backend | None = None  # the backend touching this first role's memory ahead
        self.artifacts: RoleArtifacts | None = None
        if settings.artifacts is not None:
            self.artifacts = RoleArtifacts(config, settings.artifacts, self.me, settings.run_id)

    def make_member(self, kind: type[M], settings: Settings) -> M:
        """This role's protocol object; a token that cannot be used is a usage error."""
        try:
            self.member = kind(settings, self.write, self.say)
        except RunRefused as exc:
            raise pytest.UsageError(str(exc)) from None
        return self.member

    @property
    def scope(self) -> TestScope | None:
        """The running multi-role test's view of its peers (the ``kv`` fixture)."""
        return self.member.scope

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # Runs before -k/-m deselection: the digest covers what was collected, not what was selected.
        self.collected = list(items)
        self.member.all_ids = [item.nodeid for item in items]
        self.kv_items = {item.nodeid: item for item in items if KV_ITEM in item.stash}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.selected = list(session.items)

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        # registered now, after this session: its runtestloop wrapper is then the outer one and logs
        # why the loop stopped (a refused handshake, a lost peer) before pytest prints it
        if self.artifacts is not None:
            self.artifacts.session = session
            self.config.pluginmanager.register(self.artifacts, "kvtest-artifacts")

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        watchdog = self.member.watchdog
        if watchdog is None or item.nodeid not in self.kv_items:
            return (yield)
        watchdog.arm()
        try:
            return (yield)
        finally:
            watchdog.disarm()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        # before any fixture finalizer: a failure from here on is reported at step 'teardown'
        if self.scope is not None and item.nodeid in self.kv_items:
            try:
                self.scope.begin_teardown()
            except RendezvousError:
                pass

    @pytest.hookimpl(trylast=True)
    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.member.unreachable() and not hasattr(config, "workerinput"):  # (xdist wants its worker back)
            # Every report is written. What is left is teardown: NIXL/UCX endpoints to a host that
            # does not answer, and the interpreter's own (measured: 6-7 s on a loaded 2-core host).
            # A role cut off from its run leaves now instead.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.exitstatus)

    # -- helpers ----------------------------------------------------------------------------------

    def write(self, line: str) -> None:
        if self.artifacts is not None:
            self.artifacts.write(line)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(line)

    def say(self, line: str) -> None:
        """A line on the terminal now, also from inside a test (output capture is paused for it)."""
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else nullcontext():
            self.write(line)

    def resolve_backend(self) -> None:
        """Choose the backend; when this role's tests make an LLMDataDist, warm it up and have it touch
        this role's device memory ahead (first or after the roles whose tests come first:
        :mod:`kvtest.run.touch_ahead`)."""
        backend, self.member.backend_why = chosen_backend(self.config)
        self.member.backend_name = backend.name
        if not any(map(makes_datadist, self.kv_items.values())):
            return
        backend.warm_up(self.me)
        order = [(item_topology(item).roles, makes_datadist(item)) for item in self.selected
                 if item.nodeid in self.kv_items]
        first = comes_first(self.me, order)
        backend.touch_ahead(self.most_device_memory(), first, touches_after(self.me, order))
        if first:
            self._touching = backend

    def wait_touched_ahead(self) -> None:
        """A role whose tests come first waits, before the run's first test, for the memory it touches
        ahead (at most :data:`TOUCH_AHEAD_WAIT_S`, a quarter of ``--kv-join-timeout`` if less), while
        the other roles start (the leader waits for every role before the first test). Touched during
        the tests instead, its first large cache faulted fresh pages inside the run's first tests while
        its peers waited (nightly copy_blocks, 1.28 GiB: d0's touching started 0.7 s before the first
        test; d0's fill then took 2-3 s against p0's 0.35 s). A role whose tests come later touches its
        memory as before, stepping aside for timed transfers (all roles waiting here made the nightly
        run 4-5 s longer: four roles touching 1.28 GiB each on 2 cores, one step at a time each)."""
        backend, self._touching = self._touching, None
        if backend is not None:
            backend.touched_ahead(min(TOUCH_AHEAD_WAIT_S, self.settings.join_timeout / 4))

    def most_device_memory(self) -> int:
        """The most memory one side's KV cache or memory pools take among this role's selected tests that
        make an LLMDataDist (:func:`kvtest.cases.device_bytes`)."""
        sizes = [
            item.stash.get(KV_DEVICE_BYTES, 0)
            for item in self.selected
            if item.nodeid in self.kv_items and makes_datadist(item) and self.me in item_topology(item).roles
        ]
        return max(sizes, default=0)

    def begin_artifacts(self, run_id: str) -> None:
        """Now that the run id is known: this role's artifacts folder, and its stack in the log."""
        if self.artifacts is None:
            return
        self.artifacts.begin(run_id)
        stack = self.member.fingerprint()
        facts = ", ".join(f"{k} {stack.get(k, 'absent')}" for k in STACK_KEYS)
        rdv = self.settings.rendezvous
        where = rdv.describe() if rdv is not None else "local mode"
        self.artifacts.write(f"kvtest: {self.me} on {stack.get('host')}, run {run_id} ({where}); {facts}")

    def abort_on_failure(self, rep: pytest.TestReport, result: RoleResult) -> None:
        """Tell the test's other roles this one failed (or skipped), so their waits end now."""
        if self.scope is None or rep.when == "teardown" or rep.passed:
            return
        try:
            self.scope.abort(result.message, skipped=rep.skipped)
        except RendezvousError:
            pass

    def new_scope(self, seq: int, item: pytest.Item, roles: list[str]) -> TestScope:
        return self.member.new_scope(seq, item.nodeid, roles, item_timeout(item, self.settings.timeout))


