"""The store layer: run-id namespacing, JSON values, deadlines, heartbeats, barriers."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from kvtest.run.messages import HELLO_SHAPE, RESULT_SHAPE, Handshake, Hello, RoleResult
from kvtest.run.rendezvous import (
    Heartbeat,
    PeerDead,
    PeerFailed,
    PeerWatch,
    RendezvousError,
    RendezvousLost,
    RendezvousTimeout,
    RunStore,
    check_shape,
    keys,
    open_store,
)
from kvtest.run.scope import TestScope
from kvtest.run.topology import Topology
from kvtest.settings import Rendezvous


@pytest.fixture
def tcp():
    store, port = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=5)
    yield store, port


def client(port: int) -> dist.Store:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))


def test_runs_do_not_see_each_other(tcp):
    raw, _ = tcp
    old, new = RunStore(raw, "run-old", "p0"), RunStore(raw, "run-new", "p0")
    old.set("hello/d0", {"from": "old"})
    assert not new.has("hello/d0")
    with pytest.raises(RendezvousTimeout):
        new.wait("hello/d0", what="d0", timeout=0.3)


def test_values_are_json_not_pickle(tcp):
    raw, _ = tcp
    store = RunStore(raw, "r", "p0")
    store.set("v", {"a": [1, 2]})
    assert raw.get("kvtest/r/v") == b'{"a": [1, 2]}'


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ([1, 2], "an array where an object belongs"),
        (None, "null where an object belongs"),
        ("ok", "a string where an object belongs"),
        ({}, "no 'ok' member"),
        ({"ok": 1}, "'ok' is a number, not true/false"),
        ({"ok": "yes"}, "'ok' is a string, not true/false"),
    ],
)
def test_values_of_the_wrong_shape_are_refused_in_one_line(tcp, value, problem):
    raw, _ = tcp
    store = RunStore(raw, "r", "d0")
    store.set("verdict", value)
    message = (
        f"d0 read a value of the wrong shape under 'kvtest/r/verdict' ({problem}): refusing it; "
        "is a stranger, or another kvtest version, writing to this rendezvous?"
    )
    with pytest.raises(RendezvousError) as wait_error:
        store.wait("verdict", what="p0's verdict", timeout=1, shape={"ok": bool})
    with pytest.raises(RendezvousError) as get_error:
        store.get_now("verdict", shape={"ok": bool})
    assert str(wait_error.value) == str(get_error.value) == message
    assert store.get_now("verdict") == value  # without a shape, any JSON is returned as it is


def test_values_of_the_right_shape_pass_and_extra_members_are_ignored():
    assert check_shape({"ok": True, "reason": "x"}, {"ok": bool}, "k", "d0") == {"ok": True, "reason": "x"}
    assert check_shape({"n": 1.5}, {"n": (int, float)}, "k", "d0") == {"n": 1.5}
    result = RoleResult("d0", "passed", transfers=({"api": "pull_blocks"},))
    assert RoleResult.from_json(check_shape({**result.to_json(), "new": 1}, RESULT_SHAPE, "k", "p0")) == result
    hello = Hello.make("d0", "sim", Topology(1, 1), 7, "smoke", ["t::a"])
    assert Hello.from_json(check_shape({**hello.to_json(), "new": 1}, HELLO_SHAPE, "k", "p0")) == hello


def test_leader_refuses_a_hello_of_the_wrong_shape(tcp):
    raw, port = tcp
    RunStore(client(port), "r", "d0").set(keys.hello("d0"), {"role": "d0", "version": 2})
    me = Hello.make("p0", "sim", Topology(1, 1), 7, "smoke", ["t::a"])
    handshake = Handshake(RunStore(raw, "r", "p0"), me, ["p0", "d0"], timeout=2)
    with pytest.raises(pytest.UsageError, match=r"kvtest: d0 did not join: p0 read a value of the wrong shape "
                       r"under 'kvtest/r/hello/d0' \('version' is a number, not a string\)"):
        handshake.lead()


def test_timeout_message_names_role_key_and_seconds(tcp):
    raw, _ = tcp
    store = RunStore(raw, "r1", "d0")
    start = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=r"d0 timed out after 0\.[4-9]s waiting for p0's cache \(key 'kvtest/r1/x'\)"):
        store.wait("x", what="p0's cache", timeout=0.5)
    assert time.monotonic() - start < 2


def test_wait_returns_as_soon_as_the_value_lands(tcp):
    raw, port = tcp
    store = RunStore(raw, "r", "p0")
    other = RunStore(client(port), "r", "d0")
    threading.Timer(0.2, lambda: other.set("k", 7)).start()
    start = time.monotonic()
    assert store.wait("k", what="k", timeout=5) == 7
    assert time.monotonic() - start < 1


def test_silent_peer_is_dead_after_the_limit(tcp):
    raw, port = tcp
    store = RunStore(raw, "r", "p0", PeerWatch(raw, dead_after=1.0))
    beat = Heartbeat(client(port), store.key(keys.heartbeat("d0")), interval=0.1).start()
    with pytest.raises(RendezvousTimeout):
        store.wait("never", what="x", timeout=0.6, peers=["d0"])  # alive: an ordinary timeout
    beat.stop()
    start = time.monotonic()
    with pytest.raises(PeerDead, match=r"peer d0 died: no heartbeat for 1\.\ds \(limit 1s\)"):
        store.wait("never", what="x", timeout=30, peers=["d0"])
    assert time.monotonic() - start < 3


def test_exited_child_is_dead_at_once(tcp):
    raw, _ = tcp
    watch = PeerWatch(raw, dead_after=60, exited=lambda role: "its process exited with code 70")
    store = RunStore(raw, "r", "p0", watch)
    with pytest.raises(PeerDead, match="peer d0 died: its process exited with code 70"):
        store.wait("never", what="x", timeout=30, peers=["d0"])


def test_lost_store_is_reported_as_leader_gone():
    store, port = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=5)
    follower = RunStore(client(port), "r", "d0")
    del store  # the leader's server goes away
    with pytest.raises(RendezvousLost, match="d0 lost the rendezvous store .*the leader is gone"):
        for _ in range(50):
            follower.set("x", 1)
            time.sleep(0.05)


def test_unreachable_rendezvous_names_it():
    port = 1  # nothing listens on port 1
    with pytest.raises(RendezvousLost, match=r"could not reach the rendezvous tcp://127\.0\.0\.1:1 within 1s: is p0"):
        open_store(Rendezvous("tcp", host="127.0.0.1", port=port), host=False, timeout=1)


def test_store_binds_only_the_address_asked(tcp):
    import subprocess

    _, port = tcp
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    bound = [line.split()[3] for line in listening.splitlines()[1:] if line.split()[3].endswith(f":{port}")]
    assert bound == [f"127.0.0.1:{port}"]


def scopes(raw, port, roles, timeout=5.0):
    out = []
    for role in roles:
        store = raw if role == "p0" else client(port)
        out.append(TestScope(RunStore(store, "r", role, PeerWatch(store, 5)), 0, role, roles, Topology(1, 1), timeout))
    return out


def test_barrier_releases_all_members(tcp):
    raw, port = tcp
    p, d = scopes(raw, port, ["p0", "d0"])
    done = []
    thread = threading.Thread(target=lambda: (d.barrier("b"), d.barrier("b"), done.append(1)))
    thread.start()
    p.barrier("b")
    p.barrier("b")  # the same name twice is two barriers
    thread.join(5)
    assert done == [1]


def test_abort_releases_waiting_peer(tcp):
    raw, port = tcp
    p, d = scopes(raw, port, ["p0", "d0"], timeout=60)
    p.step("push")
    threading.Timer(0.3, lambda: p.abort("AssertionError: bytes differ")).start()
    start = time.monotonic()
    with pytest.raises(PeerFailed, match=r"p0 failed at step 'push': AssertionError: bytes differ"):
        d.barrier("after push")
    assert time.monotonic() - start < 2


def test_file_store_rendezvous(tmp_path):
    rdv = Rendezvous("file", path=str(tmp_path / "store"))
    a, _ = open_store(rdv, host=True, timeout=5)
    b, _ = open_store(rdv, host=False, timeout=5)
    RunStore(a, "r", "p0").set("x", [1])
    assert RunStore(b, "r", "d0").wait("x", what="x", timeout=2) == [1]
