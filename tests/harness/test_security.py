"""Joining rules and strangers: late or missing roles, stale file stores, wrong run ids, taken roles,
addresses the rendezvous binds, and values in the store that are not JSON."""

from __future__ import annotations

import json
import pickle
import socket
import subprocess
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
from waits import listening, wait_until

from kvtest.run.messages import RoleResult
from kvtest.run.rendezvous import keys, open_store
from kvtest.run.signing import Token
from kvtest.settings import Rendezvous

PAIR = """
import os
import time


def test_pair(kv):
    kv.step("exchange")
    kv.publish("hello", kv.me)
    for peer in kv.peers:
        assert kv.fetch(peer, "hello") == peer
    kv.barrier("end")


def test_slow_pair(kv):
    kv.barrier("start")
    gate = os.environ.get("KVTEST_HARNESS_GATE")  # the harness opens it when it has seen what it needs
    if gate:
        open(f"{gate}.{kv.me}", "w").close()  # this role is inside the run: the harness may go on
    deadline = time.monotonic() + (50 if gate else 2)
    while time.monotonic() < deadline and not (gate and os.path.exists(gate)):
        time.sleep(0.05)
    kv.barrier("end")
"""


class Evil:
    """Unpickling this creates a file: proof that a value was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_follower_without_leader_is_a_usage_error(pytester: pytest.Pytester, port: int):
    pytester.makepyfile(test_pair=PAIR)
    start = time.monotonic()
    result = pytester.runpytest_subprocess(
        "--role", "d", "--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-join-timeout", "2"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: kvtest: d0: could not reach the rendezvous tcp://127.0.0.1:{port} within 2s: "
            "is p0 (the leader) running*"
        ]
    )
    assert "Traceback" not in result.stderr.str() + result.stdout.str()
    assert time.monotonic() - start < 60


def test_leader_without_follower_names_the_missing_role(pytester: pytest.Pytester, port: int):
    """A follower started 'an hour late' meets a leader that gave up after --kv-join-timeout."""
    pytester.makepyfile(test_pair=PAIR)
    result = pytester.runpytest_subprocess(
        "--role", "p", "--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-join-timeout", "3"
    )
    # not a usage error: the environment's failure, recorded per test (test_environment.py)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"kvtest: d0 never joined within 3s at tcp://127.0.0.1:{port}: *"])
    result.assert_outcomes(errors=2)
    # (a follower started with different file args: test_local_mode's collection-mismatch test)


@pytest.mark.full
def test_two_local_runs_at_once_do_not_talk(pytester: pytest.Pytester, start_role):
    for name in ("one", "two"):
        (pytester.path / name).mkdir()
        (pytester.path / name / "test_pair.py").write_text(PAIR)
    one = start_role("one", "--rootdir", "one", "one", "-p", "no:randomly")
    two = start_role("two", "--rootdir", "two", "two", "-p", "no:randomly")
    outs = [one.wait(120), two.wait(120)]
    runs = set()
    for out in outs:
        assert out.returncode == 0, out.output
        assert "2 passed" in out.output and "d0: exit 0" in out.output
        runs.add(out.output.split("kvtest: run ", 1)[1].split(",", 1)[0])
    assert len(runs) == 2


def _pair(start_role, tag: str, *args: str, d_first: bool = False, store: Path | None = None):
    p_args = ("--role", "p", *args)
    d_args = ("--role", "d", *args)
    if d_first:
        assert store is not None, "d first: the file store shows when d0 is in"
        before = store.stat().st_size if store.exists() else 0
        d = start_role(f"d-{tag}", *d_args)
        wait_until(lambda: store.exists() and store.stat().st_size > before, "d0 writing to the store first")
        p = start_role(f"p-{tag}", *p_args)
    else:
        p, d = start_role(f"p-{tag}", *p_args), start_role(f"d-{tag}", *d_args)
    return p.wait(), d.wait()


@pytest.mark.full
def test_file_store_left_over_is_never_read(pytester: pytest.Pytester, start_role):
    pytester.makepyfile(test_pair=PAIR)
    store = pytester.path / "store"
    rdv = ["--rendezvous", f"file://{store}", "-k", "not slow", "--kv-join-timeout", "60"]
    for run_id, d_first in (("r1", False), ("r2", False), ("r3", True)):
        # r3: d0 comes first, finds r2's keys (and r2 as the current run) and must wait for r3's
        p_out, d_out = _pair(start_role, run_id, *rdv, "--run-id", run_id, d_first=d_first, store=store)
        assert p_out.returncode == 0 and "1 passed" in p_out.output, p_out.output
        assert d_out.returncode == 0 and "1 passed" in d_out.output, d_out.output
        assert store.exists()  # the file keeps every earlier run's keys
    # the same run id again on that file: refused on both sides, never run on r3's old data
    p_out, d_out = _pair(start_role, "again", *rdv, "--run-id", "r3")
    for out, role in ((p_out, "p0"), (d_out, "d0")):
        assert out.returncode == pytest.ExitCode.USAGE_ERROR, out.output
        assert f"role {role} is already taken in run r3" in out.output
        assert "an earlier run may have used this --run-id" in out.output
        assert "passed" not in out.output


def test_binds_only_the_address_asked():
    raw, port = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=5)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        with pytest.raises(OSError):  # another local address of this host: nobody listens there
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
    finally:
        del raw


def test_strangers_are_refused_and_the_pair_passes(pytester: pytest.Pytester, start_role, port: int):
    pytester.makepyfile(test_pair=PAIR)
    rdv = ["--rendezvous", f"tcp://127.0.0.1:{port}", "--run-id", "good", "-p", "no:randomly"]
    gate = pytester.path / "gate"
    env = {"KVTEST_HARNESS_GATE": str(gate)}
    # the pair holds its second test open until the strangers are done, so they meet a live run
    p = start_role("p", "--role", "p", *rdv, env=env)
    d = start_role("d", "--role", "d", *rdv, env=env)
    wait_until(lambda: all(Path(f"{gate}.{role}").exists() for role in ("p0", "d0")), "the pair's second test")
    wrong = start_role("wrong", "--role", "d", *rdv[:2], "--run-id", "bad", "--kv-join-timeout", "30")
    twin = start_role("twin", "--role", "d", *rdv[:2], "--kv-join-timeout", "30")
    wrong_out, twin_out = wrong.wait(), twin.wait()
    gate.touch()
    p_out, d_out = p.wait(), d.wait()
    assert p_out.returncode == 0 and "2 passed" in p_out.output, p_out.output
    assert d_out.returncode == 0, d_out.output
    assert wrong_out.returncode == pytest.ExitCode.USAGE_ERROR, wrong_out.output
    assert "belongs to run 'good', not 'bad'" in wrong_out.output
    assert twin_out.returncode == pytest.ExitCode.USAGE_ERROR, twin_out.output
    assert "role d0 is already taken in run good" in twin_out.output


@pytest.mark.parametrize("payload", ["pickle", pytest.param("text", marks=pytest.mark.full)])
def test_values_that_are_not_json_are_refused_not_run(
    pytester: pytest.Pytester, start_role, port: int, payload: str
):
    """A fake leader plants a pickle (or plain text) where the follower reads p0's verdict."""
    pytester.makepyfile(test_pair=PAIR)
    marker = pytester.path / "executed"
    raw, _ = open_store(Rendezvous("tcp", host="127.0.0.1", port=port), host=True, timeout=30)
    raw.set(keys.CURRENT_RUN, "r")
    value = pickle.dumps(Evil(marker)) if payload == "pickle" else b"ok"
    raw.set(keys.run_prefix("r") + keys.VERDICT, value)
    d = start_role("d", "--role", "d", "--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-join-timeout", "30")
    out = d.wait()
    del raw
    assert out.returncode == pytest.ExitCode.USAGE_ERROR, out.output
    assert "d0 read a value that is not JSON under 'kvtest/r/verdict'" in out.output
    assert "refusing it" in out.output and "Traceback" not in out.output
    assert not marker.exists()


def test_an_announcement_of_the_wrong_shape_stops_the_follower_in_one_line(
    pytester: pytest.Pytester, start_role, port: int
):
    """A fake leader agrees to the run, then announces a test as a number where its id belongs."""
    pytester.makepyfile(test_pair=PAIR)
    raw, _ = open_store(Rendezvous("tcp", host="127.0.0.1", port=port), host=True, timeout=30)
    raw.set(keys.CURRENT_RUN, "r")
    raw.set(keys.run_prefix("r") + keys.VERDICT, json.dumps({"ok": True}))
    raw.set(keys.run_prefix("r") + keys.item(0), json.dumps({"nodeid": 7, "roles": ["d0"], "next": {}}))
    d = start_role("d", "--role", "d", "--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-join-timeout", "30")
    out = d.wait()
    del raw
    assert out.returncode == pytest.ExitCode.TESTS_FAILED, out.output
    assert (
        "kvtest: d0 read a value of the wrong shape under 'kvtest/r/item/0' ('nodeid' is a number, not a string)"
        in out.output
    )
    assert "Traceback" not in out.output and "INTERNALERROR" not in out.output


# -- an authenticated rendezvous (--kv-token-file / KVTEST_TOKEN) ------------------------------------

FORGED = """
import time

from kvtest.run.rendezvous import keys


def test_d_fails(kv):  # seq 0: a stranger pre-wrote "passed" for d0
    kv.barrier("start")
    assert kv.role == "p", "d0's real failure"


def test_forged_abort(kv):  # seq 1: a stranger wrote an abort in d0's name
    if kv.role == "d":
        time.sleep(0.6)
    kv.barrier("end")  # p0 waits here, reading the test's abort flag between slices


def test_forged_arrival(kv):  # seq 2: a stranger wrote d0's arrival at barrier 'end'
    if kv.role == "d":
        time.sleep(1.0)
        kv.publish("late", True)
    kv.barrier("end")
    if kv.role == "p":
        assert kv.store.read(keys.value(kv.prefix, "d0", "late")) is True, "released before d0 arrived"
"""


def _token_file(path: Path, secret: str) -> str:
    path.write_text(secret + "\n")
    return str(path)


def _stranger(port: int) -> dist.TCPStore:
    deadline = time.monotonic() + 60
    while True:
        try:
            return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))
        except (dist.DistNetworkError, OSError):
            assert time.monotonic() < deadline, "p0 never opened its rendezvous"
            time.sleep(0.2)


@pytest.mark.full
def test_forgeries_are_refused_named_and_the_pair_outcome_stands(pytester: pytest.Pytester, start_role, port: int):
    """A stranger who reaches the port reads the run id and forges a result, an abort, a barrier
    arrival and d0's claim; each is refused in one line and the run goes on. (A forged run
    announcement: p0 puts its own back every half second, so whether d0 reads the stranger's is
    a race; test_rendezvous.py's test_a_forged_run_announcement_... forges it deterministically.)"""
    pytester.makepyfile(test_forged=FORGED)
    token = _token_file(pytester.path / "token", "s3cret-for-this-run-only-1234")
    args = ["--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-token-file", token, "-p", "no:randomly"]
    p = start_role("p", "--role", "p", *args)
    stranger = _stranger(port)
    stranger.wait([keys.CURRENT_RUN], timedelta(seconds=60))
    run = json.loads(json.loads(stranger.get(keys.CURRENT_RUN))["json"])  # signed, not secret
    prefix = keys.run_prefix(run)
    passed = RoleResult("d0", "passed").to_json()
    stranger.set(prefix + keys.claim("d0"), json.dumps({"host": "x", "pid": 1, "nonce": "stranger"}))
    stranger.set(prefix + keys.result(0, "call", "d0"), json.dumps(passed))
    stranger.set(prefix + keys.result(0, "teardown", "d0"), json.dumps(passed))
    stranger.set(prefix + keys.abort(1), json.dumps({"role": "d0", "step": "x", "message": "forged", "skipped": False}))
    stranger.set(prefix + keys.barrier(keys.test(2), "end", 0) + "/d0", json.dumps(True))
    d = start_role("d", "--role", "d", *args)
    p_out, d_out = p.wait(), d.wait()
    refused = "is not signed with this run's token: someone else is writing to this rendezvous"
    for out, key in (
        (d_out, prefix + keys.claim("d0")),
        (p_out, prefix + keys.result(0, "call", "d0")),
        (p_out, prefix + keys.abort(1)),
        (p_out, prefix + keys.barrier(keys.test(2), "end", 0) + "/d0"),
    ):
        assert f"a value under {key!r} {refused}" in out.output, (key, out.output)
    assert p_out.returncode == pytest.ExitCode.TESTS_FAILED, p_out.output
    assert "1 failed, 2 passed" in p_out.output, p_out.output
    assert "FAILED test_forged.py::test_d_fails - d0 failed at step" in p_out.output
    assert "d0's real failure" in p_out.output
    assert d_out.returncode == pytest.ExitCode.TESTS_FAILED and "1 failed, 2 passed" in d_out.output, d_out.output
    del stranger


@pytest.mark.parametrize("d_token", ["other", pytest.param("none", marks=pytest.mark.full)])
def test_a_role_with_another_token_is_refused_on_both_sides(
    pytester: pytest.Pytester, start_role, port: int, d_token: str
):
    pytester.makepyfile(test_pair=PAIR)
    rdv = ["--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-dead-after", "1", "-k", "not slow"]
    p = start_role("p", "--role", "p", *rdv, env={"KVTEST_TOKEN": "the-run-token-0123456789"})
    wait_until(lambda: listening(port), "p0's rendezvous store")
    env = {"KVTEST_TOKEN": "a-different-token-0123456789"} if d_token == "other" else {}
    d = start_role("d", "--role", "d", *rdv, env=env)
    p_out, d_out = p.wait(), d.wait()
    for out in (p_out, d_out):
        assert out.returncode == pytest.ExitCode.USAGE_ERROR, out.output
        assert "give every role the same --kv-token-file (or KVTEST_TOKEN)" in out.output, out.output
        assert "passed" not in out.output and "Traceback" not in out.output
    assert "ERROR: kvtest: d0 was started with another token or none, refusing it" in p_out.output
    mine = "this role's is " if d_token == "other" else "this role has none"
    assert "ERROR: kvtest: d0: the run " in d_out.output and mine in d_out.output, d_out.output


@pytest.mark.full
def test_the_header_warns_when_a_network_rendezvous_has_no_token(pytester: pytest.Pytester, port: int):
    address = next(
        (a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
         if ":" not in a and not a.startswith("127.")),
        None,
    )
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address")
    pytester.makepyfile(test_pair=PAIR)
    warned = "kvtest: WARNING: the rendezvous tcp://{}:{} is unauthenticated"
    base = ["--role", "p", "--kv-join-timeout", "0.5", "-k", "not slow"]
    open_net = pytester.runpytest_subprocess(*base, "--rendezvous", f"tcp://{address}:{port}")
    assert open_net.ret == pytest.ExitCode.TESTS_FAILED  # no d0 joins: an environment error per test
    open_net.stdout.fnmatch_lines([warned.format(address, port) + "*--kv-token-file PATH (or KVTEST_TOKEN)*"])
    signed = pytester.runpytest_subprocess(
        *base, "--rendezvous", f"tcp://{address}:{port}", "--kv-token-file", _token_file(pytester.path / "t", "x" * 32)
    )
    loopback = pytester.runpytest_subprocess(*base, "--rendezvous", f"tcp://127.0.0.1:{port}")
    for quiet in (signed, loopback):
        assert quiet.ret == pytest.ExitCode.TESTS_FAILED and "unauthenticated" not in quiet.stdout.str()
    assert f"signed with token {Token(b'x' * 32).id}" in signed.stdout.str()


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["--kv-token-file", "missing.token"], {}, "kvtest: cannot read the token file 'missing.token' from the "
         "command line (--kv-token-file): No such file or directory; give a readable file*"),
        ([], {"KVTEST_TOKEN": "short"}, "kvtest: the token from the environment (KVTEST_TOKEN) is too short "
         "(5 characters, at least 16): make one with python -c*"),
    ],
)
def test_a_bad_token_is_a_usage_error_in_one_line(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, port: int, args, env, line
):
    pytester.makepyfile(test_pair=PAIR)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest_subprocess("--role", "p", "--rendezvous", f"tcp://127.0.0.1:{port}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: " + line])
    assert "Traceback" not in result.stderr.str()
