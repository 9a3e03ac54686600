"""A session warms its backend up (the sim's first NIXL agent, in the background) only when its tests
make an LLMDataDist: kvtest's own tests with fake roles must not pay for an agent they never use. It
tells the backend the most memory a KV cache or memory pools take among this role's selected tests
(the sim touches that much of its device memory ahead; when, :mod:`kvtest.run.touch_ahead` decides and
tests/harness/test_touch_ahead.py checks)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from kvtest.cases import BlocksCase, CopyCacheCase, HostPullCase, cache_bytes, device_bytes, tensor_bytes
from kvtest.roles.topology import parse_topology
from kvtest.run import session as session_module
from kvtest.run.session import KV_DEVICE_BYTES, KV_ITEM, SessionHooks

GIB = 1 << 30
MIB = 1 << 20


class _Backend:
    name = "fake"

    def __init__(self) -> None:
        #: (role warmed up, bytes it was then told to touch ahead)
        self.warmed: list[tuple[str, int]] = []
        #: whether it was told the role comes first, each time
        self.first: list[bool] = []

    def warm_up(self, role: str) -> None:
        self.warmed.append((role, 0))

    def touch_ahead(self, device_bytes: int, first: bool, after: int = 0) -> None:
        self.warmed[-1] = (self.warmed[-1][0], device_bytes)
        self.first.append(first)
        #: the timeouts touched_ahead was waited with
        self.waited: list[float] = []

    def touched_ahead(self, timeout_s: float) -> bool:
        self.waited.append(timeout_s)
        return True


class _Item:
    def __init__(self, nodeid: str, fixturenames: tuple[str, ...], topology: str = "1p2d", case: Any = None):
        self.nodeid, self.fixturenames = nodeid, fixturenames
        self.stash: dict[Any, Any] = {KV_ITEM: parse_topology(topology)}
        if case is not None:  # as kvtest.plugin stashes it at collection
            self.stash[KV_DEVICE_BYTES] = device_bytes(case)


def _resolve(
    monkeypatch: pytest.MonkeyPatch, items: list[_Item], deselected: int = 0, backend: _Backend | None = None,
    join_timeout: float = 120.0,
) -> list[tuple[str, int]]:
    backend = backend or _Backend()
    monkeypatch.setattr(session_module, "chosen_backend", lambda config: (backend, "because"))
    hooks: Any = object.__new__(SessionHooks)
    hooks.config, hooks.me, hooks._touching = None, "d1", None
    hooks.settings = SimpleNamespace(join_timeout=join_timeout)
    hooks.member = SimpleNamespace(backend_why=None, backend_name=None)
    hooks.kv_items = {item.nodeid: item for item in items}
    hooks.selected = items[deselected:]
    hooks.resolve_backend()
    assert hooks.member.backend_name == "fake"
    hooks.wait_touched_ahead()
    hooks.wait_touched_ahead()  # once: the first test waits, no later one
    return backend.warmed


def test_a_session_whose_tests_make_a_datadist_warms_up(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(monkeypatch, [_Item("a", ("kv",)), _Item("b", ("kv", "datadist"))]) == [("d1", 0)]


def test_a_session_without_one_does_not(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _resolve(monkeypatch, [_Item("a", ("kv",)), _Item("b", ("kv", "kv_backend"))]) == []
    assert _resolve(monkeypatch, []) == []


XPYD = BlocksCase("fp16", 40, 32, 512 * 1024, (0,), (1,))  # the nightly xPyD case: 40 x 32 MiB
SMALL = BlocksCase("fp32", 1, 3, 10, (0,), (1,))


def test_the_backend_hears_the_largest_cache_of_this_roles_selected_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_bytes(XPYD) == 40 * 32 * 512 * 1024 * 2 == 1.25 * GIB
    assert cache_bytes(SMALL) == 120
    assert cache_bytes(CopyCacheCase("int8", 2, 2, 3, 4096, 1, 2)) == 0  # two pools, no one cache shape
    assert cache_bytes(None) == 0
    items = [  # every other case is larger than XPYD: each filter matters
        _Item("deselected", ("kv", "datadist", "case"), "1p2d", BlocksCase("fp16", 80, 256, 64 * 1024, (0,), (1,))),
        _Item("not-d1s", ("kv", "datadist", "case"), "2p1d", BlocksCase("fp16", 80, 192, 64 * 1024, (0,), (1,))),
        _Item("no-datadist", ("kv", "case"), "1p2d", BlocksCase("fp16", 80, 160, 64 * 1024, (0,), (1,))),
        _Item("small", ("kv", "datadist", "case"), "1p2d", SMALL),
        _Item("xpyd", ("kv", "datadist", "case"), "1p2d", XPYD),
    ]
    assert _resolve(monkeypatch, items, deselected=1) == [("d1", device_bytes(XPYD))]


def test_a_case_with_memory_pools_asks_for_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pool is device memory a test may allocate anywhere in, so a role whose largest memory is a
    pool round a small cache (the pull_cache sample: 64 MiB for 128 KiB) has the pool touched ahead."""
    copy = CopyCacheCase("int8", 2, 2, 3, 4096, 1, 2)
    assert cache_bytes(copy) == 0 and device_bytes(copy) == copy.pool > 2 * MIB
    host = HostPullCase("fp16", 4, 2, 16384, ((0, 1),), src_host=True)
    assert device_bytes(host) == host.host_pool + host.device_pool + tensor_bytes(host) > cache_bytes(host)
    # no pool: the cache and the one expected tensor a check holds beside it
    assert device_bytes(XPYD) == cache_bytes(XPYD) + cache_bytes(XPYD) // XPYD.num_tensors
    assert tensor_bytes(SMALL) == 120 // SMALL.num_tensors and device_bytes(SMALL) == 120 + tensor_bytes(SMALL)
    assert device_bytes(None) == 0
    items = [_Item("xpyd-elsewhere", ("kv", "datadist", "case"), "2p1d", XPYD),
             _Item("small", ("kv", "datadist", "case"), "1p2d", SMALL),
             _Item("host-pull", ("kv", "datadist", "case"), "1p2d", host)]
    assert _resolve(monkeypatch, items) == [("d1", device_bytes(host))]


def test_the_backend_hears_whether_this_role_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """d1 (the role _resolve plays) comes first when it has a test that makes an LLMDataDist among the
    run's first LEAD selected ones, deselected tests not counted."""
    from kvtest.run.touch_ahead import LEAD

    others = [_Item(f"t{i}", ("kv", "datadist"), "1p1d") for i in range(LEAD)]
    late, early = _Backend(), _Backend()
    _resolve(monkeypatch, [*others, _Item("xpyd", ("kv", "datadist"))], backend=late)
    _resolve(monkeypatch, [_Item("gone", ("kv",)), *others[1:], _Item("xpyd", ("kv", "datadist"))],
             deselected=1, backend=early)
    assert (late.first, early.first) == ([False], [True])


def test_a_role_that_comes_first_waits_for_its_memory_before_the_first_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a role whose tests come first waits (a later role touches its memory between tests), once,
    no longer than TOUCH_AHEAD_WAIT_S or a quarter of the join timeout (its peers wait for it to join
    meanwhile); a role without a test that makes an LLMDataDist touches nothing and waits for nothing."""
    from kvtest.run.session import TOUCH_AHEAD_WAIT_S
    from kvtest.run.touch_ahead import LEAD

    others = [_Item(f"t{i}", ("kv", "datadist"), "1p1d") for i in range(LEAD)]
    late, early, hurried, idle = _Backend(), _Backend(), _Backend(), _Backend()
    _resolve(monkeypatch, [*others, _Item("xpyd", ("kv", "datadist"))], backend=late)
    _resolve(monkeypatch, [_Item("xpyd", ("kv", "datadist")), *others], backend=early)
    _resolve(monkeypatch, [_Item("xpyd", ("kv", "datadist"))], backend=hurried, join_timeout=20.0)
    _resolve(monkeypatch, [_Item("xpyd", ("kv",))], backend=idle)
    assert (late.first, early.first) == ([False], [True])
    assert (late.waited, early.waited, hurried.waited) == ([], [TOUCH_AHEAD_WAIT_S], [5.0])
    assert not hasattr(idle, "waited")


def test_every_case_parameter_counts_whatever_its_name(pytester: pytest.Pytester) -> None:
    """The memory touched ahead is read from the item's parameters at collection: copy_blocks names its
    case ``blocks_case`` (1.28 GiB in nightly), pull_from_cache_to_blocks has pools and no single cache
    shape. Read from a parameter named ``case`` only, those counted 0."""
    pytester.makeconftest("""
        import json
        from kvtest.run.session import KV_DEVICE_BYTES

        def pytest_collection_finish(session):
            sizes = {item.name: item.stash[KV_DEVICE_BYTES] for item in session.items}
            with open("sizes.json", "w") as out:
                json.dump(sizes, out)
    """)
    pytester.makepyfile(test_sizes="""
        import pytest
        from kvtest.cases import BlocksCase
        from types import SimpleNamespace

        @pytest.mark.kv(topology="1p1d")
        @pytest.mark.parametrize("blocks_case", [BlocksCase("fp16", 40, 32, 512 * 1024, (0,), (1,))])
        def test_blocks(kv, blocks_case):
            pass

        @pytest.mark.kv(topology="1p1d")
        @pytest.mark.parametrize("pooled", [SimpleNamespace(pool=64 << 20)])
        @pytest.mark.parametrize("n", [3])
        def test_pool(kv, pooled, n):
            pass
    """)
    pytester.runpytest_inprocess("--collect-only", "-q", "-p", "no:cacheprovider").assert_outcomes()
    assert json.loads((pytester.path / "sizes.json").read_text()) == {
        "test_blocks[blocks_case0]": 41 * 32 * 512 * 1024 * 2, "test_pool[3-pooled0]": 64 << 20,
    }


def test_the_sim_waits_for_its_touching_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from kvtest.backends.sim.backend import SimBackend
    from kvtest.host import reused_memory

    release = threading.Event()
    monkeypatch.setattr(reused_memory, "prefault", lambda nbytes, first, after: release.wait(10))
    sim = SimBackend(api=None)  # type: ignore[arg-type]
    assert sim.touched_ahead(0.01)  # nothing touched ahead: nothing to wait for
    sim.touch_ahead(reused_memory.MIN_BYTES - 1, True)
    assert sim.touched_ahead(0.01)  # too small to touch ahead
    sim.touch_ahead(64 * MIB, True)
    assert not sim.touched_ahead(0.05)
    release.set()
    assert sim.touched_ahead(10)


def test_a_follower_touches_ahead_before_it_joins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the join, so that the leader's wait for every role covers it: after the join the run's
    first test could already be announced."""
    from kvtest.run.follower_session import FollowerSession

    calls: list[str] = []
    session: Any = object.__new__(FollowerSession)
    session.resolve_backend = lambda: calls.append("resolve")
    session.wait_touched_ahead = lambda: calls.append("wait")
    session.begin_artifacts = lambda run_id: calls.append("artifacts")

    def join() -> str:
        calls.append("join")
        return "run"

    session.follower = SimpleNamespace(join=join, agree=lambda: [])
    session._join()
    assert calls == ["resolve", "wait", "join", "artifacts"]


def test_the_leader_waits_for_its_own_after_the_roles_joined(monkeypatch: pytest.MonkeyPatch) -> None:
    """p0 touches ahead while the roles it starts get going, and waits (if it must) before its first test."""
    from kvtest.run.leader_session import LeaderSession

    calls: list[str] = []
    session: Any = object.__new__(LeaderSession)
    session.kv_items, session.artifacts = {}, None
    session.resolve_backend = lambda: calls.append("resolve")
    session.wait_touched_ahead = lambda: calls.append("wait")
    session._note_roles = lambda refused: calls.append("noted")
    session.leader = SimpleNamespace(plan=lambda needed: None, open=lambda launch: calls.append("open"))
    session._start(SimpleNamespace(items=[]))
    assert calls == ["resolve", "open", "noted", "wait"]
