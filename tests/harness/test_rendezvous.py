"""The store layer: run-id namespacing, JSON values, deadlines, heartbeats, barriers."""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from kvtest.roles.topology import Topology
from kvtest.run import rendezvous as rendezvous_module
from kvtest.run.errors import RunRefused
from kvtest.run.handshake import Handshake
from kvtest.run.messages import HELLO_SHAPE, RESULT_SHAPE, Hello, RoleResult
from kvtest.run.rendezvous import (
    ForgedValue,
    Heartbeat,
    PeerDead,
    PeerFailed,
    PeerWatch,
    RendezvousError,
    RendezvousLost,
    RendezvousTimeout,
    RunStore,
    TokenMismatch,
    check_shape,
    diagnose,
    keys,
    open_store,
)
from kvtest.run.scope import TestScope
from kvtest.run.signing import Token
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
    with pytest.raises(RunRefused, match=r"kvtest: d0 did not join: p0 read a value of the wrong shape "
                       r"under 'kvtest/r/hello/d0' \('version' is a number, not a string\)"):
        handshake.lead()


def test_timeout_message_names_role_key_and_seconds(tcp):
    raw, _ = tcp
    store = RunStore(raw, "r1", "d0")
    start = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=r"d0 timed out after (\d+\.\d)s waiting for p0's cache \(key 'kvtest/r1/x'\)") as raised:
        store.wait("x", what="p0's cache", timeout=0.5)
    said = float(re.search(r"after (\d+\.\d)s", str(raised.value)).group(1))  # type: ignore[union-attr]
    # the seconds it names are the ones it waited: never short of the timeout (a loaded machine only adds)
    assert 0.5 <= said + 0.05 and said <= time.monotonic() - start + 0.05, (said, str(raised.value))


def test_wait_returns_as_soon_as_the_value_lands(tcp):
    raw, port = tcp
    store = RunStore(raw, "r", "p0")
    other = RunStore(client(port), "r", "d0")
    threading.Timer(0.2, lambda: other.set("k", 7)).start()
    start = time.monotonic()
    assert store.wait("k", what="k", timeout=5) == 7
    assert time.monotonic() - start < 1


def test_a_wait_notes_the_peers_steps_only_once_it_has_to_wait(tcp):
    """A peer's step (named when p0 and its store vanish) costs round trips: a wait that ends within
    its first 0.2 s slice reads none; a longer one reads them between slices."""
    raw, port = tcp
    watch = PeerWatch(raw, dead_after=30)
    reads: list[str] = []
    watch.describe_step_with(lambda role: reads.append(role) or "push")
    store = RunStore(raw, "r", "d0", watch)
    beat = Heartbeat(client(port), store.key(keys.heartbeat("p0")), interval=0.1).start()
    store.set("here", 1)
    assert store.wait("here", what="here", timeout=5, peers=["p0"]) == 1
    assert reads == []
    threading.Timer(0.5, lambda: store.set("later", 2)).start()
    assert store.wait("later", what="later", timeout=5, peers=["p0"]) == 2
    beat.stop()
    assert reads and set(reads) == {"p0"} and watch.last_steps == {"p0": "push"}


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


def test_barrier_holds_a_member_back_until_the_last_arrives(tcp):
    raw, port = tcp
    p, d = scopes(raw, port, ["p0", "d0"])
    passed: list[float] = []
    thread = threading.Thread(target=lambda: (d.barrier("b"), passed.append(time.monotonic())))
    thread.start()
    deadline = time.monotonic() + 30
    while p.peer_step("d0") != "barrier b":  # wait for d0 to be at the barrier, then look
        assert time.monotonic() < deadline, "d0 never reached barrier 'b'"
        time.sleep(0.01)
    assert passed == [], "d0 passed barrier 'b' before p0 reached it"
    arrived = time.monotonic()
    p.barrier("b")
    thread.join(5)
    assert passed and passed[0] >= arrived
    # after the barrier each role's step says so, not the step it had before
    assert (p.current_step, d.current_step) == ("after barrier b", "after barrier b")


def test_barrier_with_a_missing_member_times_out(tcp):
    raw, port = tcp
    (d,) = scopes(raw, port, ["d0"], timeout=0.5)
    d.roles = ("p0", "d0")
    with pytest.raises(RendezvousTimeout, match=r"d0 timed out after 0\.\ds waiting for barrier 'b' with p0"):
        d.barrier("b")


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


# -- deadlines of the store connection itself -------------------------------------------------------


def _sockets_to(port: int) -> list[socket.socket]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername()[1] == port:
                out.append(sock)
                continue
        except (OSError, IndexError, TypeError):
            pass
        sock.close()
    return out


@pytest.mark.parametrize("dead_after", [None, 2.5])
def test_client_connection_fails_when_the_host_is_silent_for_dead_after(tcp, dead_after):
    """Without keepalive and TCP_USER_TIMEOUT a store call on a cut link blocks for ever (issue 14);
    the namespace tests in test_two_hosts show the cut itself."""
    _, port = tcp
    before = {s.getsockname() for s in _sockets_to(port)}
    store, _ = open_store(Rendezvous("tcp", host="127.0.0.1", port=port), host=False, timeout=5,
                          dead_after=dead_after)
    mine = [s for s in _sockets_to(port) if s.getsockname() not in before]
    assert mine
    for sock in mine:
        with sock:
            user_timeout = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
            keepalive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
            assert (user_timeout, keepalive) == ((2500, 1) if dead_after else (0, 0))
    del store


def test_a_broken_connection_is_told_apart_by_a_fresh_one(tcp, port):
    assert diagnose("127.0.0.1", tcp[1]) == "up"
    assert diagnose("127.0.0.1", port) == "gone"  # the host answers, nobody listens
    # a host that does not answer at all: test_two_hosts cuts a veth link for that


@pytest.mark.parametrize(("error", "state"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "gone"),
    # p0 exiting closes its store's connections, then its listening socket: a connection made in
    # between is reset (CI: d0 read a crashed p0 as "network partition or p0's host is down")
    (ConnectionResetError(errno.ECONNRESET, "reset"), "gone"),
    (ConnectionAbortedError(errno.ECONNABORTED, "aborted"), "gone"),
    (TimeoutError("timed out"), "partition"),  # no answer at all
    (OSError(errno.EHOSTUNREACH, "no route to host"), "partition"),
])
def test_a_host_that_answers_is_up_whatever_it_answers(monkeypatch, error, state):
    def connect(address, timeout):
        raise error

    monkeypatch.setattr(rendezvous_module.socket, "create_connection", connect)
    assert diagnose("192.0.2.1", 1) == state


# -- signed values ----------------------------------------------------------------------------------

TOKEN = Token(b"0123456789abcdef-run-secret")
OTHER = Token(b"another-secret-0123456789")


def signed(raw, role, token=TOKEN, warnings=None):
    return RunStore(raw, "r", role, token=token, warn=(warnings.append if warnings is not None else None))


def test_signed_values_are_sealed_json(tcp):
    raw, _ = tcp
    signed(raw, "p0").set("v", {"a": 1})
    stored = json.loads(raw.get("kvtest/r/v"))
    assert stored["kvtest_signed"] == 1 and stored["token"] == TOKEN.id and json.loads(stored["json"]) == {"a": 1}
    assert TOKEN.text() not in raw.get("kvtest/r/v").decode()
    assert signed(raw, "d0").get_now("v") == {"a": 1}


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        ("unsigned", "is not signed with this run's token: someone else is writing to this rendezvous"),
        ("other", f"is signed with another token (id {OTHER.id}; this run's is {TOKEN.id})"),
        ("moved", "is not signed with this run's token"),  # a real signature copied to another key
        ("garbage", "is not signed with this run's token"),
    ],
)
def test_a_forged_value_is_refused_named_and_waited_past(tcp, forge, why):
    raw, port = tcp
    p0 = signed(raw, "p0")
    p0.set("t/0/call/p0", {"outcome": "failed"})
    forged = {
        "unsigned": json.dumps({"outcome": "passed"}),
        "other": RunStore(raw, "r", "d0", token=OTHER).encode("kvtest/r/t/0/call/d0", {"outcome": "passed"}),
        "moved": raw.get("kvtest/r/t/0/call/p0").decode(),
        "garbage": "\x80not json",
    }[forge]
    raw.set("kvtest/r/t/0/call/d0", forged)
    real = signed(client(port), "d0")
    threading.Timer(0.5, lambda: real.set("t/0/call/d0", {"outcome": "failed"})).start()
    warnings: list[str] = []
    reader = signed(raw, "p0", warnings=warnings)
    assert reader.wait("t/0/call/d0", what="d0's outcome", timeout=5) == {"outcome": "failed"}
    assert warnings == [f"kvtest: p0: a value under 'kvtest/r/t/0/call/d0' {why}" + warnings[0].split(why, 1)[1]]
    assert reader.read("t/0/call/d0") == {"outcome": "failed"}


def test_forged_values_are_never_returned_and_grace_ends_the_wait(tcp):
    raw, _ = tcp
    raw.set("kvtest/r/hello/d0", json.dumps({"role": "d0"}))
    warnings: list[str] = []
    store = signed(raw, "p0", warnings=warnings)
    assert store.read("hello/d0") is None
    with pytest.raises(ForgedValue, match="hello/d0' is not signed"):
        store.get_now("hello/d0")
    start = time.monotonic()
    with pytest.raises(ForgedValue):
        store.wait("hello/d0", what="d0 to join", timeout=30, forged_grace=0.5)
    assert time.monotonic() - start < 2
    with pytest.raises(RendezvousTimeout, match="refused a value there not signed"):
        store.wait("hello/d0", what="d0 to join", timeout=0.5)
    assert len(warnings) == 1  # one line per forged value, however often it is read


def test_a_role_without_the_token_reading_a_signed_value_says_so(tcp):
    raw, _ = tcp
    signed(raw, "p0").set("verdict", {"ok": True})
    with pytest.raises(TokenMismatch, match=f"signed with a token \\(id {TOKEN.id}\\) but d0 was started without one"):
        RunStore(raw, "r", "d0").get_now("verdict")


def test_a_forged_claim_or_abort_is_replaced_by_the_real_one(tcp):
    raw, port = tcp
    raw.set("kvtest/r/claim/d0", json.dumps({"nonce": "stranger"}))
    raw.set("kvtest/r/t/0/abort", json.dumps({"role": "d0", "step": "x", "message": "forged", "skipped": False}))
    warnings: list[str] = []
    store = signed(client(port), "d0", warnings=warnings)
    hello = Hello.make("d0", "sim", Topology(1, 1), 7, "smoke", ["t::a"])
    Handshake(store, hello, ["p0", "d0"], timeout=2).claim()  # the stranger's claim does not stop d0
    with pytest.raises(RunRefused, match="role d0 is already taken"):  # a real second d0 does
        Handshake(signed(client(port), "d0"), hello, ["p0", "d0"], timeout=2).claim()
    p0, d0 = (TestScope(signed(raw if r == "p0" else client(port), r), 0, r, ["p0", "d0"], Topology(1, 1), 5)
              for r in ("p0", "d0"))
    p0.check_abort()  # the forged abort is not d0's
    d0.step("push")
    d0.abort("AssertionError: real")
    with pytest.raises(PeerFailed, match="d0 failed at step 'push': AssertionError: real"):
        p0.check_abort()
    assert [w.split("'")[1] for w in warnings] == ["kvtest/r/claim/d0"]


def test_a_forged_barrier_arrival_does_not_release_the_barrier(tcp):
    raw, port = tcp
    raw.set("kvtest/r/t/0/barrier/b/0/d0", json.dumps(True))
    warnings: list[str] = []
    p0 = TestScope(signed(raw, "p0", warnings=warnings), 0, "p0", ["p0", "d0"], Topology(1, 1), 5)
    d0 = TestScope(signed(client(port), "d0"), 0, "d0", ["p0", "d0"], Topology(1, 1), 5)
    threading.Timer(0.6, lambda: d0.barrier("b")).start()
    start = time.monotonic()
    p0.barrier("b")
    assert time.monotonic() - start >= 0.5  # released by d0, not by the stranger
    assert warnings == [
        "kvtest: p0: a value under 'kvtest/r/t/0/barrier/b/0/d0' is not signed with this run's token: "
        "someone else is writing to this rendezvous"
    ]


@pytest.mark.parametrize(
    ("forge", "why"),
    [
        ("unsigned", "is not signed with this run's token: someone else is writing to this rendezvous"),
        ("moved", "is not signed with this run's token"),  # a real seal, made for another key
    ],
)
def test_a_forged_run_announcement_is_refused_once_and_the_real_one_joined(tcp, tmp_path, forge, why):
    """d0 reads p0's announcement every 50 ms while it joins: a stranger's in its place is said
    once, however often it is read, and d0 joins the run p0 announces next."""
    from kvtest.run.follower import Follower
    from kvtest.run.signing import RunSeal
    from kvtest.settings import Settings

    raw, port = tcp
    p0 = RunSeal(TOKEN, "p0")
    forged = {"unsigned": "stranger-run", "moved": p0.encode("run-1", "kvtest/r/hello/p0", "run-1")}[forge]
    raw.set(keys.CURRENT_RUN, forged)
    threading.Timer(0.5, lambda: client(port).set(keys.CURRENT_RUN, p0.announce("run-1"))).start()
    (tmp_path / "token").write_text(TOKEN.text() + "\n")
    settings = Settings(role="d", rendezvous=Rendezvous("tcp", host="127.0.0.1", port=port),
                        token_file=tmp_path / "token", join_timeout=5)
    said: list[str] = []
    assert Follower(settings, said.append, said.append)._current_run(raw) == "run-1"
    assert said == [f"kvtest: d0: a value under 'kvtest/current-run' {why}" + said[0].split(why, 1)[1]]


class _Counting:
    """A store that counts the calls made to it (each one a round trip to a TCPStore)."""

    def __init__(self, store: dist.Store) -> None:
        self.store, self.calls = store, []

    def __getattr__(self, name):
        self.calls.append(name)
        return getattr(self.store, name)


def test_a_value_already_there_is_read_in_one_round_trip_and_a_late_one_waited_for(tcp):
    raw, port = tcp
    signed(raw, "d0").set("v", {"a": 1})
    counting = _Counting(client(port))
    store = RunStore(counting, "r", "p0", token=TOKEN)
    assert store.wait("v", what="d0's v", timeout=5) == {"a": 1}
    assert counting.calls == ["compare_set"]
    assert store.read("v") == {"a": 1} and counting.calls == ["compare_set"] * 2
    counting.calls.clear()
    threading.Timer(0.3, lambda: signed(client(port), "d0").set("late", 2)).start()
    assert store.wait("late", what="d0's late", timeout=5) == 2
    first, *between, last = counting.calls
    assert (first, last) == ("compare_set", "compare_set") and set(between) == {"wait"}, counting.calls


def test_a_stranger_writing_the_peek_marker_is_refused_once_not_polled(tcp):
    """A key that holds peek's own marker looks absent to a read, yet a wait finds it there: it is a
    stranger's value, refused and waited past like any other (not re-read as fast as the store answers)."""
    from kvtest.host.store_peek import ABSENT

    raw, port = tcp
    raw.set("kvtest/r/t/0/call/d0", ABSENT)
    counting = _Counting(client(port))
    warnings: list[str] = []
    store = RunStore(counting, "r", "p0", token=TOKEN, warn=warnings.append)
    threading.Timer(0.5, lambda: signed(client(port), "d0").set("t/0/call/d0", {"outcome": "passed"})).start()
    assert store.wait("t/0/call/d0", what="d0's outcome", timeout=5) == {"outcome": "passed"}
    assert len(warnings) == 1 and "is not signed with this run's token" in warnings[0], warnings
    assert len(counting.calls) < 40, counting.calls  # 50 ms apart, not one round trip after another


def test_a_wait_woken_by_another_roles_peek_waits_on_for_the_value():
    """On a libuv TCPStore (torchrun's agent store) another role's read of a missing key wakes this
    role's wait for it: the wait finds nothing there and waits again, refusing nothing."""
    from kvtest.host.store_peek import peek

    host = dist.TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=5), use_libuv=True)
    warnings: list[str] = []
    store = RunStore(client(host.port), "r", "d1", token=TOKEN, warn=warnings.append)
    other = client(host.port)
    threading.Timer(0.2, lambda: peek(other, "kvtest/r/item/1")).start()
    threading.Timer(0.5, lambda: signed(client(host.port), "p0").set("item/1", {"n": 1})).start()
    assert store.wait("item/1", what="p0's next test", timeout=5) == {"n": 1}
    assert warnings == []


def test_a_stranger_marker_ends_a_wait_with_a_grace_for_forgeries(tcp):
    """forged_grace (the handshake's hello) holds for peek's marker too: refused, then raised."""
    from kvtest.host.store_peek import ABSENT

    raw, port = tcp
    raw.set("kvtest/r/hello/d0", ABSENT)
    store = RunStore(client(port), "r", "p0", token=TOKEN, warn=lambda line: None)
    start = time.monotonic()
    with pytest.raises(ForgedValue, match="hello/d0' is not signed"):
        store.wait("hello/d0", what="d0 to join", timeout=30, forged_grace=0.5)
    assert time.monotonic() - start < 5
