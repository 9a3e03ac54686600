"""Acceptance: two-role test files run by the leader/follower machinery, in local and paired mode."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TWO_ROLE = """
import os, signal
import pytest

def test_pass(kv):
    kv.step("exchange")
    kv.publish("hello", kv.me)
    for peer in kv.peers:
        assert kv.fetch(peer, "hello") == peer
    kv.barrier("end")

def test_follower_fails(kv):
    kv.step("push")
    if kv.role == "d":
        assert 1 == 2, "d computed the wrong thing"
    kv.barrier("after push")

def test_leader_fails(kv):
    kv.step("register")
    if kv.role == "p":
        raise RuntimeError("p could not register")
    kv.barrier("registered")

def test_follower_killed(kv):
    kv.step("push")
    if kv.role == "d":
        os.kill(os.getpid(), signal.SIGKILL)
    kv.barrier("after push")

def test_solo():
    pass

def test_d_fails_after_the_last_barrier(kv):
    kv.step("exchange")
    kv.barrier("last")
    if kv.role == "d":
        assert 1 == 2, "d found wrong bytes after the last barrier"

@pytest.fixture
def fragile(kv):
    yield
    if kv.role == "d":
        raise RuntimeError("d could not release its cache")

def test_follower_teardown_fails(kv, fragile):
    kv.step("work")
    kv.barrier("end")

@pytest.mark.kv(timeout=2)
def test_marker_timeout(kv):
    assert kv.timeout == 2, f"{kv.me}: kv.timeout is {kv.timeout}, the kv marker says 2"
    if kv.role == "d":
        kv.step("wait")
        kv.fetch("p0", "never published")
"""


def junit_times(path: Path) -> dict[str, float]:
    root = ET.parse(path).getroot()
    return {case.get("name"): float(case.get("time")) for case in root.iter("testcase")}


def junit_messages(path: Path) -> dict[str, str]:
    """Each failed or errored test case's one-line message, untruncated."""
    root = ET.parse(path).getroot()
    return {
        case.get("name"): problem.get("message", "")
        for case in root.iter("testcase")
        for problem in case
        if problem.tag in ("failure", "error")
    }


def d0_log(base: Path) -> str:
    logs = list((base / "kvtest-logs").glob("*/d0.log"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def test_passes_when_both_roles_pass(pytester: pytest.Pytester):
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess("-k", "test_pass or test_solo", "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*kvtest: run *, topology 1p1d (local mode*", "*the other roles' logs are in*d0: exit 0*"])
    log = d0_log(pytester.path)
    assert "test_pair.py::test_pass PASSED" in log
    assert "test_solo" not in log  # a single-process test runs on the leader only


def test_follower_failure_fails_the_leader(pytester: pytest.Pytester):
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess("-k", "test_follower_fails")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*d0 failed at step 'push': AssertionError: d computed the wrong thing*",
        "*---- d0 ----*",
    ])
    result.stdout.fnmatch_lines(["FAILED test_pair.py::test_follower_fails - d0 failed at step 'push'*"])
    assert "d0: exit 1" in result.stdout.str()  # the follower exits non-zero too


@pytest.mark.full
def test_follower_failure_after_the_last_barrier_fails_the_leader(pytester: pytest.Pytester):
    """p0 passed and left the test before d0 failed: the leader still waits for d0's outcome and fails
    the test, naming the step d0 was at (after the barrier, not the step before it)."""
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess(
        "-k", "test_d_fails_after_the_last_barrier", "--kv-results=r.json", "--junitxml=j.xml"
    )
    result.assert_outcomes(failed=1)
    assert junit_messages(pytester.path / "j.xml")["test_d_fails_after_the_last_barrier"].startswith(
        "d0 failed at step 'after barrier last': AssertionError: d found wrong bytes after the last barrier"
    )
    recorded = json.loads((pytester.path / "r.json").read_text())["tests"]
    assert [entry["outcome"] for entry in recorded.values()] == ["failed"], recorded
    assert "d0: exit 1" in result.stdout.str()


@pytest.mark.full
def test_follower_teardown_failure_is_reported_at_teardown(pytester: pytest.Pytester):
    """A fixture of d0 fails at teardown after every role passed the body: p0 reports an error at
    teardown that names d0 and step 'teardown', never a pass."""
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess(
        "-k", "test_follower_teardown_fails", "--kv-results=r.json", "--junitxml=j.xml"
    )
    result.assert_outcomes(passed=1, errors=1)
    assert junit_messages(pytester.path / "j.xml")["test_follower_teardown_fails"] == (
        "failed on teardown with \"d0 failed at step 'teardown': RuntimeError: d could not release its cache\""
    )
    recorded = json.loads((pytester.path / "r.json").read_text())["tests"]
    assert [entry["outcome"] for entry in recorded.values()] == ["error"], recorded
    assert "d0: exit 1" in result.stdout.str()


@pytest.mark.full
def test_marker_timeout_beats_the_command_line(pytester: pytest.Pytester):
    """``kv(timeout=2)`` wins over ``--kv-timeout 60`` on every role: d0's wait ends after 2 s."""
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess("-k", "test_marker_timeout", "--kv-timeout", "60", "--junitxml=j.xml")
    result.assert_outcomes(failed=1)
    message = junit_messages(pytester.path / "j.xml")["test_marker_timeout"]
    assert re.match(r"d0 failed at step 'wait': \S*RendezvousTimeout: d0 timed out after 2\.\ds waiting for "
                    r"p0's 'never published'", message), message
    assert junit_times(pytester.path / "j.xml")["test_marker_timeout"] < 15


@pytest.mark.full
def test_leader_failure_is_primary_and_releases_the_follower(pytester: pytest.Pytester):
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess("-k", "test_leader_fails", "--kv-timeout", "60", "--junitxml=j.xml")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "RuntimeError: p could not register" in out
    assert "d0 failed at step 'barrier registered': p0 failed at step 'register'" in out
    result.stdout.fnmatch_lines(["FAILED test_pair.py::test_leader_fails - p0 failed at step 'register'*"])
    # d0 was waiting at a barrier: the abort flag released it at once, not after the 60 s timeout
    assert junit_times(pytester.path / "j.xml")["test_leader_fails"] < 10


@pytest.mark.full
def test_killed_follower_is_reported_fast(pytester: pytest.Pytester):
    pytester.makepyfile(test_pair=TWO_ROLE)
    result = pytester.runpytest_subprocess(
        "-k", "test_follower_killed or test_pass", "--kv-timeout", "120", "--junitxml=j.xml", "-p", "no:randomly"
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    out = result.stdout.str()
    assert re.search(r"peer d0 died at step 'push': its process \(pid \d+\) was killed by signal SIGKILL", out), out
    result.stdout.fnmatch_lines(["FAILED test_pair.py::test_follower_killed - peer d0 died at step 'push'*"])
    assert "ERROR" not in out  # the death is reported once, not again at teardown
    assert "stopping the run" in out  # a dead peer ends the session instead of failing test after test
    assert junit_times(pytester.path / "j.xml")["test_follower_killed"] < 10


def test_no_peer_tests_start_no_processes(pytester: pytest.Pytester):
    pytester.makepyfile("def test_plain(): pass")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    assert not (pytester.path / "kvtest-logs").exists()
    assert "kvtest: run" not in result.stdout.str()


# --- paired mode: two pytest processes started by hand, as on two hosts -------------------------


@pytest.mark.full
def test_paired_mode_passes(pytester: pytest.Pytester, start_role, port: int):
    pytester.makepyfile(test_pair=TWO_ROLE)
    rdv = f"tcp://127.0.0.1:{port}"
    p = start_role("p", "--role", "p", "--rendezvous", rdv, "-k", "test_pass or test_solo")
    d = start_role("d", "--role", "d", "--rendezvous", rdv, "-k", "test_pass")
    p_out, d_out = p.wait(), d.wait()
    assert p_out.returncode == 0, p_out.output
    assert d_out.returncode == 0, d_out.output
    assert "2 passed" in p_out.output and "1 passed" in d_out.output


@pytest.mark.full
def test_paired_mode_heartbeat_reports_dead_follower(pytester: pytest.Pytester, start_role, port: int):
    pytester.makepyfile(test_pair=TWO_ROLE)
    rdv = f"tcp://127.0.0.1:{port}"
    common = ["--rendezvous", rdv, "-k", "test_follower_killed", "--kv-timeout", "120"]
    p = start_role("p", "--role", "p", *common, "--junitxml=j.xml")
    d = start_role("d", "--role", "d", *common)
    p_out, d_out = p.wait(), d.wait()
    assert d_out.returncode == -9
    assert p_out.returncode == 1, p_out.output
    assert re.search(r"peer d0 died at step 'push': no heartbeat for \d+\.\ds \(limit 5s\)", p_out.output)
    assert junit_times(pytester.path / "j.xml")["test_follower_killed"] < 10


@pytest.mark.full
def test_collection_mismatch_is_refused_with_the_difference(pytester: pytest.Pytester, start_role, port: int):
    pytester.makepyfile(test_pair=TWO_ROLE, test_extra="def test_more(kv): pass\n")
    rdv = f"tcp://127.0.0.1:{port}"
    p = start_role("p", "--role", "p", "--rendezvous", rdv, "test_pair.py")
    d = start_role("d", "--role", "d", "--rendezvous", rdv, "test_pair.py", "test_extra.py")
    p_out, d_out = p.wait(), d.wait()
    expected = "collected tests differ: 1 only on d0 (test_extra.py::test_more)"
    assert p_out.returncode == 4 and expected in p_out.output, p_out.output
    assert d_out.returncode == 4 and "p0 refused the run" in d_out.output and expected in d_out.output
    assert "Traceback" not in p_out.output + d_out.output


@pytest.mark.full
def test_taken_port_is_a_usage_error(pytester: pytest.Pytester):
    import socket

    pytester.makepyfile(test_pair=TWO_ROLE)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        result = pytester.runpytest_subprocess("--role", "p", "--rendezvous", f"tcp://127.0.0.1:{taken}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: kvtest: --rendezvous tcp://127.0.0.1:{taken}: cannot listen on 127.0.0.1:{taken}*"])


MODULE_SCOPED = """
import pytest

@pytest.fixture(scope="module")
def shared():
    return object()

@pytest.mark.parametrize("i", range(3))
def test_each(kv, shared, i):
    kv.barrier(f"b{i}")
"""


@pytest.mark.full
def test_xdist_lanes_each_lead_their_own_roles(pytester: pytest.Pytester):
    # each xdist worker is a leader with its own followers; a worker runs a subset of the items, so
    # the followers must not keep module fixtures for an item their leader will not run next
    pytester.makepyfile(test_a=MODULE_SCOPED, test_b=MODULE_SCOPED, test_c=TWO_ROLE)
    result = pytester.runpytest_subprocess("-n", "2", "-k", "test_each or test_pass")
    result.assert_outcomes(passed=7)
    assert len(list((pytester.path / "kvtest-logs").glob("*/d0.log"))) == 2
