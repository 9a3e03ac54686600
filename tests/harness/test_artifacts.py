"""Per-role artifacts (``--kv-artifacts``) and stack fingerprints at the handshake (``--kv-require-same-stack``).

Real runs: local mode (p0 starts d0 itself) and two processes started by hand with ``--role``. A stack
difference is made as on two real hosts: each role gets its own Ascend install root
(``KVTEST_ASCEND_ROOT``) whose ``driver/version.info`` names another driver version, which is what the
fingerprint reads (:func:`kvtest.host.fingerprint.driver_version`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvtest.results.results import ResultsError, load_results
from kvtest.roles.topology import Topology
from kvtest.run.messages import Hello, stack_differences
from kvtest.settings import parse_switch, resolve

TESTS = """
import os, signal

def test_pass(kv):
    kv.step("exchange")
    kv.barrier("end")

def test_follower_fails(kv):
    kv.step("push")
    if kv.role == "d":
        assert 1 == 2, "d computed the wrong thing"
    kv.barrier("after push")

def test_follower_killed(kv):
    kv.step("push")
    if kv.role == "d":
        os.kill(os.getpid(), signal.SIGKILL)
    kv.barrier("after push")
"""


def run_folder(art: Path) -> Path:
    """The one run folder under ``art`` (and nothing left pending)."""
    runs = [p for p in art.iterdir() if p.is_dir()]
    assert len(runs) == 1, sorted(art.iterdir())
    return runs[0]


def junit_cases(path: Path) -> dict[str, tuple[str, str]]:
    """name -> (outcome, message) of each test case of a JUnit XML file (parsing it)."""
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        problem = next((c for c in case if c.tag in ("failure", "error", "skipped")), None)
        out[str(case.get("name"))] = (
            problem.tag if problem is not None else "passed",
            problem.get("message", "") if problem is not None else "",
        )
    return out


def ascend_root(base: Path, name: str, driver: str) -> Path:
    root = base / name
    (root / "driver").mkdir(parents=True)
    (root / "driver" / "version.info").write_text(f"Version={driver}\n")
    return root


# --- local mode ------------------------------------------------------------------------------------


def test_local_mode_writes_one_folder_per_role(pytester: pytest.Pytester):
    """p0 (with the user's --junitxml) and d0 (started by p0) each leave a parsed JUnit XML and a log with
    the session lines and each outcome with its failure text; p0 also writes the results file there."""
    pytester.makepyfile(test_pair=TESTS)
    result = pytester.runpytest_subprocess(
        "-k", "test_pass or test_follower_fails", "--kv-artifacts", "art", "--junitxml=j.xml", "-p", "no:randomly"
    )
    result.assert_outcomes(passed=1, failed=1)
    assert "stack differs" not in result.stdout.str()  # one host, one stack: nothing to say
    run = run_folder(pytester.path / "art")
    assert sorted(p.name for p in run.iterdir()) == ["d0", "p0", "results.json"]
    for role in ("p0", "d0"):
        assert sorted(p.name for p in (run / role).iterdir()) == ["junit.xml", "kvtest.log"], role

    p0 = junit_cases(run / "p0" / "junit.xml")
    assert p0["test_pass"] == ("passed", "")
    assert p0["test_follower_fails"][0] == "failure"
    assert p0["test_follower_fails"][1].startswith("d0 failed at step 'push'")
    assert (run / "p0" / "junit.xml").read_bytes() == (pytester.path / "j.xml").read_bytes()
    d0 = junit_cases(run / "d0" / "junit.xml")
    assert d0["test_pass"] == ("passed", "")
    assert d0["test_follower_fails"][0] == "failure"
    assert "d computed the wrong thing" in d0["test_follower_fails"][1]

    p0_log = (run / "p0" / "kvtest.log").read_text()
    assert f"kvtest: run {run.name}, topology 1p1d (local mode" in p0_log
    assert "torch threads:" in p0_log
    assert re.search(r"p0 on \S+, run \S+ \(local mode\); cann \S+, driver \S+, firmware", p0_log), p0_log
    assert "test_pair.py::test_pass PASSED" in p0_log
    assert "test_pair.py::test_follower_fails FAILED" in p0_log
    assert "d0 failed at step 'push': AssertionError: d computed the wrong thing" in p0_log
    assert "p0 finished with exit status 1" in p0_log
    d0_log = (run / "d0" / "kvtest.log").read_text()
    assert "d0 on " in d0_log and f"run {run.name} (tcp://127.0.0.1:" in d0_log
    assert "test_pair.py::test_follower_fails FAILED" in d0_log
    assert "AssertionError: d computed the wrong thing" in d0_log
    assert "d0 finished with exit status 1" in d0_log

    results = load_results(run / "results.json")
    assert results.run_id == run.name
    assert sorted(results.roles) == ["d0", "p0"]
    assert results.roles["d0"]["pid"] != results.roles["p0"]["pid"]
    assert results.roles["d0"]["fingerprint"]["torch"] == results.roles["p0"]["fingerprint"]["torch"] != "absent"
    assert results.stack_differences == ()
    roles = results.tests["test_pair.py::test_follower_fails"]["roles"]
    assert (roles["p0"]["outcome"], roles["d0"]["outcome"]) == ("failed", "failed")
    assert not (pytester.path / "art" / ".pending").exists()


@pytest.mark.full
def test_killed_role_leaves_its_files(pytester: pytest.Pytester):
    """d0 is killed with SIGKILL in a test: its folder still holds its log (up to its death) and a valid
    JUnit XML saying it did not finish; p0's folder has the real report naming the death."""
    pytester.makepyfile(test_pair=TESTS)
    result = pytester.runpytest_subprocess(
        "-k", "test_pass or test_follower_killed", "--kv-artifacts", "art", "--kv-timeout", "60",
        "-p", "no:randomly",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    run = run_folder(pytester.path / "art")
    d0 = junit_cases(run / "d0" / "junit.xml")
    assert list(d0) == ["d0"] and d0["d0"][0] == "error", d0
    assert "d0 did not finish its session" in d0["d0"][1]
    d0_log = (run / "d0" / "kvtest.log").read_text()
    assert "test_pair.py::test_pass PASSED" in d0_log
    assert "finished with exit status" not in d0_log  # it died; the log ends where it did
    p0 = junit_cases(run / "p0" / "junit.xml")
    assert p0["test_follower_killed"][0] == "failure"
    assert "peer d0 died at step 'push'" in p0["test_follower_killed"][1]
    assert "peer d0 died at step 'push'" in (run / "p0" / "kvtest.log").read_text()
    recorded = json.loads((run / "results.json").read_text())
    assert recorded["tests"]["test_pair.py::test_follower_killed"]["roles"]["d0"]["outcome"] == "failed"
    assert sorted(recorded["roles"]) == ["d0", "p0"]


@pytest.mark.full
def test_role_that_never_joins_leaves_its_files(pytester: pytest.Pytester, port: int):
    """A follower whose leader never comes stops with a usage error; its log says why, and its folder is
    filed under no-run-<time>-<pid> (no run id was ever learned), next to nothing pending."""
    pytester.makepyfile(test_pair=TESTS)
    result = pytester.runpytest_subprocess(
        "--role", "d", "--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-join-timeout", "2", "--kv-artifacts", "art"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    run = run_folder(pytester.path / "art")
    assert re.fullmatch(r"no-run-\d{8}-\d{6}-\d+", run.name), run.name
    assert junit_cases(run / "d0" / "junit.xml") == {}  # pytest's own report of a run that ran nothing
    log = (run / "d0" / "kvtest.log").read_text()
    assert "d0 stopped: d0: could not reach the rendezvous" in log and "exit status 4" in log, log
    assert not (pytester.path / "art" / ".pending").exists()


# --- two processes started by hand -----------------------------------------------------------------


@pytest.mark.full
def test_paired_roles_with_different_stacks_print_and_store(pytester: pytest.Pytester, start_role, port: int):
    pytester.makepyfile(test_pair=TESTS)
    rdv = ("--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-artifacts", "art", "-k", "test_pass")
    env_p = {"KVTEST_ASCEND_ROOT": str(ascend_root(pytester.path, "ascend-p", "23.0.1"))}
    env_d = {"KVTEST_ASCEND_ROOT": str(ascend_root(pytester.path, "ascend-d", "24.1.0"))}
    p = start_role("p", "--role", "p", *rdv, env=env_p)
    d = start_role("d", "--role", "d", *rdv, env=env_d)
    p_out, d_out = p.wait(), d.wait()
    assert p_out.returncode == 0, p_out.output
    assert d_out.returncode == 0, d_out.output
    line = "stack differs between roles: driver 23.0.1 on p0 but 24.1.0 on d0"
    assert f"kvtest: {line}" in p_out.output
    assert f"kvtest: d0: {line}" in d_out.output
    run = run_folder(pytester.path / "art")
    for role in ("p0", "d0"):
        assert junit_cases(run / role / "junit.xml") == {"test_pass": ("passed", "")}, role
        assert line in (run / role / "kvtest.log").read_text(), role
    results = load_results(run / "results.json")
    assert results.stack_differences == ("driver 23.0.1 on p0 but 24.1.0 on d0",)
    assert results.roles["p0"]["fingerprint"]["driver"] == "23.0.1"
    assert results.roles["d0"]["fingerprint"]["driver"] == "24.1.0"


@pytest.mark.parametrize(
    "who", ["p0 command line", "d0 environment"], ids=["p0-flag", "d0-env"]
)
@pytest.mark.full
def test_require_same_stack_refuses_on_every_role(pytester: pytest.Pytester, start_role, port: int, who: str):
    """Either role asking for the same stack makes the difference a refusal: both exit 4 with one line."""
    pytester.makepyfile(test_pair=TESTS)
    rdv = ("--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-artifacts", "art", "-k", "test_pass")
    env_p = {"KVTEST_ASCEND_ROOT": str(ascend_root(pytester.path, "ascend-p", "23.0.1"))}
    env_d = {"KVTEST_ASCEND_ROOT": str(ascend_root(pytester.path, "ascend-d", "24.1.0"))}
    flag: tuple[str, ...] = ()
    if who == "p0 command line":
        flag = ("--kv-require-same-stack",)
    else:
        env_d["KVTEST_REQUIRE_SAME_STACK"] = "true"
    p = start_role("p", "--role", "p", *rdv, *flag, env=env_p)
    d = start_role("d", "--role", "d", *rdv, env=env_d)
    p_out, d_out = p.wait(60), d.wait(60)
    strict = "p0" if flag else "d0"
    reason = (f"stack differs between roles ({strict} started with --kv-require-same-stack): "
              "driver 23.0.1 on p0 but 24.1.0 on d0")
    for name, out in (("p0", p_out), ("d0", d_out)):
        assert out.returncode == pytest.ExitCode.USAGE_ERROR, f"{name}: {out.output}"
        errors = [line for line in out.output.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and reason in errors[0], out.output
        assert "Traceback" not in out.output
    run = run_folder(pytester.path / "art")
    for role in ("p0", "d0"):
        assert junit_cases(run / role / "junit.xml") == {}, role  # a valid report of a run that never started
        assert reason in (run / role / "kvtest.log").read_text(), role
    results = load_results(run / "results.json")  # the refused run says who took part, on which stack
    assert results.tests == {} and sorted(results.roles) == ["d0", "p0"]
    assert results.stack_differences == ("driver 23.0.1 on p0 but 24.1.0 on d0",)


@pytest.mark.full
def test_require_same_stack_lets_the_same_stack_run(pytester: pytest.Pytester, start_role, port: int):
    """The refusal comes from the difference, not the flag: the same driver on both roles runs."""
    pytester.makepyfile(test_pair=TESTS)
    rdv = ("--rendezvous", f"tcp://127.0.0.1:{port}", "-k", "test_pass")
    env = {"KVTEST_ASCEND_ROOT": str(ascend_root(pytester.path, "ascend", "23.0.1"))}
    p = start_role("p", "--role", "p", *rdv, "--kv-require-same-stack", env=env)
    d = start_role("d", "--role", "d", *rdv, env={**env, "KVTEST_REQUIRE_SAME_STACK": "1"})
    p_out, d_out = p.wait(60), d.wait(60)
    assert p_out.returncode == 0, p_out.output
    assert d_out.returncode == 0, d_out.output
    assert "stack differs" not in p_out.output + d_out.output


@pytest.mark.full
def test_torchrun_ranks_write_one_folder_each(pytester: pytest.Pytester):
    """Under a launcher every rank is a role started by it: each files its own folder in the one run."""
    pytester.makepyfile(test_pair=TESTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVTEST_")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "pytest",
         "-p", "no:cacheprovider", "-k", "test_pass or test_follower_fails", "--kv-artifacts", "art"],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode != 0, proc.stdout[-3000:]  # test_follower_fails fails on every rank
    run = run_folder(pytester.path / "art")
    assert sorted(p.name for p in run.iterdir()) == ["d0", "p0", "results.json"], proc.stdout[-3000:]
    for role in ("p0", "d0"):
        cases = junit_cases(run / role / "junit.xml")
        assert cases["test_pass"] == ("passed", "") and cases["test_follower_fails"][0] == "failure", role
        assert "test_pair.py::test_follower_fails FAILED" in (run / role / "kvtest.log").read_text()
    assert "torchrun's agent store" in (run / "d0" / "kvtest.log").read_text()
    assert sorted(load_results(run / "results.json").roles) == ["d0", "p0"]


# --- units: the switch, the folder option, the stack comparison, the results member ----------------


@pytest.mark.parametrize("text, value", [("1", True), ("true", True), ("ON", True), ("0", False),
                                         ("false", False), ("no", False)])
def test_switch_values(text: str, value: bool):
    assert parse_switch(text) is value
    assert resolve({}, {"KVTEST_REQUIRE_SAME_STACK": text}, {}).require_same_stack is value
    assert resolve({}, {}, {"kv_require_same_stack": text}).require_same_stack is value


@pytest.mark.full
def test_switch_flag_and_bad_values(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    assert resolve({"require_same_stack": "true"}, {"KVTEST_REQUIRE_SAME_STACK": "0"}, {}).require_same_stack
    assert resolve({}, {}, {}).require_same_stack is False
    with pytest.raises(pytest.UsageError, match=r"'maybe' from the environment \(KVTEST_REQUIRE_SAME_STACK\) "
                       r"is invalid: a switch is one of 1/true/yes/on or 0/false/no/off"):
        resolve({}, {"KVTEST_REQUIRE_SAME_STACK": "maybe"}, {})
    pytester.makefile(".txt", afile="x")
    with pytest.raises(pytest.UsageError, match=r"afile.txt' from the command line \(--kv-artifacts\) is "
                       r"invalid: .*afile.txt is a file, not a folder"):
        resolve({"artifacts": str(pytester.path / "afile.txt")}, {}, {})
    assert resolve({"artifacts": str(pytester.path / "new" / "deeper")}, {}, {}).artifacts == (
        pytester.path / "new" / "deeper"
    )
    # on the command line: a flag without a value (the next word is not taken), and a one-line error
    monkeypatch.setenv("KVTEST_REQUIRE_SAME_STACK", "perhaps")
    result = pytester.runpytest_subprocess("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = [line for line in result.stderr.str().splitlines() if line.strip()]
    assert len(err) == 1 and "'perhaps' from the environment (KVTEST_REQUIRE_SAME_STACK)" in err[0], err
    monkeypatch.delenv("KVTEST_REQUIRE_SAME_STACK")
    pytester.makepyfile(test_x="def test_x(): pass")
    result = pytester.runpytest_subprocess("--kv-require-same-stack", "test_x.py")
    result.assert_outcomes(passed=1)


@pytest.mark.full
def test_artifacts_with_xdist_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest_subprocess("-n", "2", "--kv-artifacts", "art")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--kv-artifacts cannot be combined with -n" in result.stderr.str()


def _hello(role: str, **facts: str) -> Hello:
    stack = {"cann": "8.0.RC3", "driver": "23.0.1", "firmware": "7.1", "torch": "2.1.0",
             "torch_npu": "2.1.0.post6", "llm_datadist": "CANN 8.0.RC3", "python": "3.11", **facts}
    return Hello.make(role, "npu", Topology(1, 2), 1, "smoke", ["t"], fingerprint=stack)


def test_stack_differences():
    assert stack_differences([_hello("p0"), _hello("d0"), _hello("d1", python="3.12")]) == []
    assert stack_differences([_hello("p0"), _hello("d0", llm_datadist="1.1.0"), _hello("d1", cann="8.1")]) == [
        "cann 8.0.RC3 on p0 but 8.1 on d1",
        "llm_datadist CANN 8.0.RC3 on p0 but 1.1.0 on d0",
    ]
    # a hello from an older kvtest has no fingerprint: read, and left out of the comparison
    old = _hello("d0").to_json()
    del old["fingerprint"], old["require_same_stack"]
    assert Hello.from_json(old).fingerprint == {}
    assert stack_differences([_hello("p0"), Hello.from_json(old)]) == []
    assert Hello.from_json(_hello("d0", torch="2.2").to_json()).fingerprint["torch"] == "2.2"


def test_results_roles_member_is_optional_and_checked(tmp_path: Path):
    from kvtest.results.results import ResultsWriter

    writer = ResultsWriter(tmp_path / "r.json", run_id="r1", fingerprint={"backend": "sim"})
    older = load_results(tmp_path / "r.json")  # as kvtest 0.2.0 wrote it: no roles member
    assert older.roles == {} and older.stack_differences == ()
    writer.set_roles({"p0": {"host": "a", "pid": 1, "fingerprint": {"driver": "1"}}}, ["x"])
    loaded = load_results(tmp_path / "r.json")
    assert loaded.roles == {"p0": {"host": "a", "pid": 1, "fingerprint": {"driver": "1"}}}
    assert loaded.stack_differences == ("x",)
    doc = json.loads((tmp_path / "r.json").read_text())
    doc["roles"]["p0"]["fingerprint"]["driver"] = 1
    (tmp_path / "r.json").write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=r"roles\['p0'\]\.fingerprint\['driver'\] must be a string, got 1"):
        load_results(tmp_path / "r.json")
