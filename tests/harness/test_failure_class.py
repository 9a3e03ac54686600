"""Environment vs product, unit by unit: the classification, its JSON, the results fields, the summary
line, ``kvtest compare``'s section and exit status, and the leader's handshake when a role never joins.

The end-to-end runs (a peer that never joins, a device error inside a test, a flipped byte) are in
test_environment.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtest import cli
from kvtest.host import devices
from kvtest.host.devices import DeviceError
from kvtest.host.devpool import DevicePoolError
from kvtest.host.problems import EnvironmentProblem
from kvtest.patterns import KVMismatch
from kvtest.results.compare import ENVIRONMENT, EXIT_ENVIRONMENT, compare_results
from kvtest.results.metrics import TransferLog
from kvtest.results.report import environment_lines, summary_lines
from kvtest.results.results import ResultsError, ResultsWriter, load_results, role_entry
from kvtest.roles.topology import Topology
from kvtest.run.failure import PeerNeverJoined, classify, resolve
from kvtest.run.handshake import Handshake
from kvtest.run.messages import RESULT_SHAPE, Hello, RoleResult
from kvtest.run.rendezvous import (
    PeerDead,
    RendezvousLost,
    RendezvousPartition,
    RendezvousTimeout,
    RunStore,
    check_shape,
    keys,
    open_store,
)
from kvtest.settings import Rendezvous

NEVER = "d0 never joined within 120s at tcp://10.0.0.1:29517"


# -- classify ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        DeviceError("hccn_tool -i 0 -ip -g failed (exit 1): ..."),
        DevicePoolError("every NPU stays held"),
        PeerNeverJoined(["d0"], 120, "tcp://10.0.0.1:29517"),
        RendezvousPartition("d0 cannot reach p0's rendezvous at 10.0.0.1:29517 for 9.0s"),
        EnvironmentProblem("anything kvtest's own host checks raise"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_environment_errors_are_environment(exc: BaseException):
    assert classify(exc) == "environment"


@pytest.mark.parametrize(
    "exc",
    [
        KVMismatch("1 of 2 tensors differ"),  # a wrong byte
        AssertionError("[push_blocks] failed, error code is LLMStatusCode.LLM_LINK_FAILED"),
        RuntimeError("llm_datadist raised"),
        PeerDead("d0", "exited with status 70"),  # a crash mid-test can be the product
        RendezvousLost("d0 lost the rendezvous store (hosted by p0): the leader is gone"),  # p0 crashed
        RendezvousTimeout("p0 timed out after 30.0s waiting for d0's call outcome"),  # a hang, too
        None,
    ],
    ids=lambda e: type(e).__name__,
)
def test_everything_else_is_the_product(exc: BaseException | None):
    assert classify(exc) == "product"


def test_device_errors_share_the_environment_base():
    assert issubclass(DeviceError, EnvironmentProblem) and issubclass(DevicePoolError, EnvironmentProblem)
    never = PeerNeverJoined(["d0", "d1"], 3, "tcp://127.0.0.1:1")
    assert str(never) == "d0, d1 never joined within 3s at tcp://127.0.0.1:1"
    assert never.roles == ("d0", "d1")


# -- resolve: the test's verdict and the secondary roles ---------------------------------------------


def _failed(role: str, failure: str | None, *, secondary: bool = False, died: bool = False,
            message: str = "boom", step: str = "push") -> RoleResult:
    return RoleResult(role, "failed", step, message, secondary=secondary, died=died, failure=failure)


def test_a_secondary_failure_takes_the_class_of_the_primary_one():
    p0 = _failed("p0", None, secondary=True, message="d0 failed at step 'rank table': ...")
    d0 = _failed("d0", "environment", message="hccn_tool -i 0 -ip -g failed", step="rank table")
    results, verdict = resolve([p0, d0])
    assert verdict.failure == "environment"
    assert verdict.cause == "d0 failed at step 'rank table': hccn_tool -i 0 -ip -g failed"
    assert [r.failure for r in results] == ["environment", "environment"]


def test_any_primary_product_failure_makes_the_test_the_products():
    results, verdict = resolve([_failed("p0", "environment"), _failed("d0", "product", message="wrong byte")])
    assert verdict.failure == "product" and verdict.cause == "d0 failed at step 'push': wrong byte"
    assert [r.failure for r in results] == ["environment", "product"]


def test_unclassified_and_dead_peers_are_the_product():
    # an older follower publishes no class; a peer that died is reported secondary by the leader
    assert resolve([_failed("d0", None)])[1].failure == "product"
    dead = _failed("d0", None, secondary=True, died=True, message="peer d0 died: exited with status 70")
    results, verdict = resolve([RoleResult("p0", "passed"), dead])
    assert verdict.failure == "product" and verdict.cause == "peer d0 died: exited with status 70"
    assert results[0].failure is None and results[1].failure == "product"


def test_no_failure_and_secondary_only_have_no_class():
    assert resolve([RoleResult("p0", "passed"), RoleResult("d0", "skipped")])[1].failure is None
    # a follower that only saw p0 fail cannot tell why: its own JUnit gets no class
    assert resolve([_failed("d0", None, secondary=True)])[1].failure is None


def test_the_cause_is_one_line_and_capped():
    _, verdict = resolve([_failed("d0", "product", message="x\n" * 400)])
    assert verdict.cause is not None and "\n" not in verdict.cause and len(verdict.cause) <= 240


# -- what crosses the store -------------------------------------------------------------------------


def test_role_results_carry_their_class_and_older_ones_read_as_none():
    result = _failed("d0", "environment")
    assert RoleResult.from_json(check_shape(result.to_json(), RESULT_SHAPE, "k", "p0")) == result
    older = {k: v for k, v in result.to_json().items() if k != "failure"}  # kvtest 0.2.0's JSON
    assert RoleResult.from_json(older).failure is None
    assert RoleResult.from_json({**result.to_json(), "failure": "cosmic rays"}).failure is None


# -- the results file -------------------------------------------------------------------------------


def _env_run(path: Path, *, created: str | None = None, env_tests: tuple[str, ...] = ("t::a", "t::b"),
             failed: tuple[str, ...] = ()) -> Path:
    writer = ResultsWriter(path, run_id="r", fingerprint={"backend": "sim"})
    for test in ("t::a", "t::b", "t::c"):
        log = TransferLog(role="d0")
        log.add("pull_blocks", 4096, 0.001)
        if test in env_tests:
            roles = {"p0": role_entry("failed", step="join", message=NEVER, failure="environment"),
                     "d0": role_entry("failed", step="join", message=NEVER, failure="environment")}
            writer.add(test, "error", roles, (), None, "environment", NEVER)
        elif test in failed:
            roles = {"p0": role_entry("failed", step="check", message="wrong byte", failure="product"),
                     "d0": role_entry("passed")}
            writer.add(test, "failed", roles, log.records, None, "product", "p0 failed at step 'check'")
        else:
            writer.add(test, "passed", {"p0": role_entry("passed"), "d0": role_entry("passed")}, log.records)
    if created is not None:
        doc = json.loads(path.read_text())
        doc["created"] = created
        path.write_text(json.dumps(doc))
    return path


def test_the_results_file_keeps_the_class_and_the_cause(tmp_path):
    loaded = load_results(_env_run(tmp_path / "r.json"))
    a, c = loaded.tests["t::a"], loaded.tests["t::c"]
    assert (a["outcome"], a["failure"], a["failure_cause"]) == ("error", "environment", NEVER)
    assert a["roles"]["d0"]["failure"] == "environment"
    assert (c["outcome"], c["failure"], c["failure_cause"]) == ("passed", None, None)
    assert c["roles"]["d0"]["failure"] is None


def test_a_pass_never_keeps_a_class(tmp_path):
    writer = ResultsWriter(tmp_path / "r.json", run_id="r", fingerprint={})
    entry = writer.add("t::a", "passed", {}, (), None, "environment", "leftover")
    assert entry["failure"] is None and entry["failure_cause"] is None
    with pytest.raises(ValueError, match="failure must be one of environment, product or None, got 'cable'"):
        writer.add("t::a", "failed", {}, (), None, "cable")


def test_files_without_the_fields_still_load_and_bad_values_are_refused(tmp_path):
    path = _env_run(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    for entry in doc["tests"].values():  # what kvtest 0.2.0 wrote
        del entry["failure"], entry["failure_cause"]
        for role in entry["roles"].values():
            del role["failure"]
    path.write_text(json.dumps(doc))
    assert all(e["failure"] is None and e["failure_cause"] is None for e in load_results(path).tests.values())
    doc["tests"]["t::a"]["roles"]["d0"]["failure"] = "cable"
    path.write_text(json.dumps(doc))
    with pytest.raises(ResultsError, match=r"tests\['t::a'\]\.roles\['d0'\]\.failure must be one of "
                                           r"environment\|product or null, got 'cable'"):
        load_results(path)


# -- the terminal summary ---------------------------------------------------------------------------


def test_the_summary_counts_environment_failures_apart_with_their_cause(tmp_path):
    tests = load_results(_env_run(tmp_path / "r.json", failed=("t::c",))).tests
    assert environment_lines(tests) == [f"kvtest: 2 environment failures (not the product): {NEVER} (2 tests)"]
    lines = summary_lines(tests)
    assert [line.endswith("(environment)") for line in lines] == [True, True, False]
    clean = load_results(_env_run(tmp_path / "clean.json", env_tests=(), failed=("t::c",))).tests
    assert environment_lines(clean) == []  # a product failure is not counted there


def test_several_causes_get_a_line_each(tmp_path):
    path = _env_run(tmp_path / "r.json")
    doc = json.loads(path.read_text())
    doc["tests"]["t::b"]["failure_cause"] = "d0 failed at step 'rank table': hccn_tool failed"
    path.write_text(json.dumps(doc))
    assert environment_lines(load_results(path).tests) == [
        "kvtest: 2 environment failures (not the product):",
        f"  {NEVER} (1 test)",
        "  d0 failed at step 'rank table': hccn_tool failed (1 test)",
    ]


# -- kvtest compare ---------------------------------------------------------------------------------


def _compare(capsys, *argv) -> tuple[int, str]:
    code = cli.main(["compare", *map(str, argv)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def test_compare_lists_environment_failures_apart_and_exits_3(tmp_path, capsys):
    base = _env_run(tmp_path / "base.json", env_tests=())
    code, out = _compare(capsys, base, _env_run(tmp_path / "cur.json"))
    assert code == EXIT_ENVIRONMENT == 3, out
    assert "environment failures (not regressions, not gated): 2" in out
    assert f"  t::a: {NEVER}" in out and f"  t::b: {NEVER}" in out
    assert "result: no regression" in out and "2 test(s) failed because of the environment" in out
    row = next(line for line in out.splitlines() if line.startswith("t::a "))
    assert "passed -> error" in row and row.rstrip().endswith(ENVIRONMENT)


def test_a_regression_beside_environment_failures_exits_1(tmp_path, capsys):
    base = _env_run(tmp_path / "base.json", env_tests=())
    code, out = _compare(capsys, base, _env_run(tmp_path / "cur.json", env_tests=("t::a",), failed=("t::c",)))
    assert code == 1, out
    assert "result: 1 regression(s): FAILED t::c [pull_blocks]" in out
    assert "environment failures (not regressions, not gated): 1" in out


def test_the_same_product_failure_is_a_regression_exit_1(tmp_path, capsys):
    # the control: the outcome that is exit 3 as an environment failure is exit 1 as the product's
    base = _env_run(tmp_path / "base.json", env_tests=())
    code, out = _compare(capsys, base, _env_run(tmp_path / "cur.json", env_tests=(), failed=("t::a",)))
    assert code == 1 and "environment failures" not in out, out


def test_an_environment_failed_baseline_does_not_hide_a_regression(tmp_path):
    good = load_results(_env_run(tmp_path / "good.json", env_tests=(), created="2026-01-01T00:00:00+00:00"))
    broken = load_results(_env_run(tmp_path / "broken.json", created="2026-01-02T00:00:00+00:00"))
    current = load_results(_env_run(tmp_path / "cur.json", env_tests=(), failed=("t::a",)))
    rows = {r.test: r for r in compare_results([broken, good], current, 0.1)}
    assert rows["t::a"].baseline == "passed" and rows["t::a"].regression  # from the good run
    only_broken = {r.test: r for r in compare_results([broken], current, 0.1)}
    assert only_broken["t::a"].baseline == "error" and not only_broken["t::a"].regression


# -- device facts ----------------------------------------------------------------------------------


def test_a_failing_hccn_tool_names_a_missing_hccn_conf(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "HCCN_CONF", tmp_path / "hccn.conf")
    missing = str(devices._tool_failed(["-i", "0", "-ip", "-g"], 1, "open /etc/hccn.conf failed"))
    assert f"{tmp_path / 'hccn.conf'} is missing (a container needs the host's: mount it read-only" in missing
    (tmp_path / "hccn.conf").write_text("address_0=192.168.1.1\n")
    present = str(devices._tool_failed(["-i", "0", "-ip", "-g"], 1, "device busy"))
    assert "is missing" not in present and present.endswith("check the device id and the driver (npu-smi info)")


# -- the handshake ----------------------------------------------------------------------------------


@pytest.fixture
def tcp():
    store, port = open_store(Rendezvous("tcp", host="127.0.0.1", port=0), host=True, timeout=5)
    yield store, port


def test_the_leader_raises_peer_never_joined_and_refuses_late_comers(tcp):
    raw, port = tcp
    me = Hello.make("p0", "sim", Topology(1, 2), 7, "smoke", ["t::a"])
    store = RunStore(raw, "r", "p0")
    handshake = Handshake(store, me, ["p0", "d0", "d1"], timeout=0.5)
    with pytest.raises(PeerNeverJoined) as caught:
        handshake.lead(where=f"tcp://127.0.0.1:{port}")
    assert str(caught.value) == f"d0, d1 never joined within 0.5s at tcp://127.0.0.1:{port}"
    assert store.get_now(keys.VERDICT) == {"ok": False, "reason": str(caught.value)}
