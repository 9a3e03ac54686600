"""Reliability: dead peers at every api, stalled transfers, failed links, late or missing roles.

Every test here runs real kvtest processes (pytester subprocesses, or ``start_role`` for paired
mode) on the sim backend, with faults injected by ``KVTEST_SIM_FAULT``. FLOWS call every api the
samples call, each in a small case; ``actor`` is the side that links and moves the data.
"""

from __future__ import annotations

import json
import re
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

BEFORE = """
def test_before_solo():
    pass


def test_before_pair(kv):
    kv.step("hello")
    kv.barrier("hello")
"""

FLOWS = """
import pytest
import torch

ID = {"p": 0, "d": 1}
SHAPE = (4, 16)


def other_of(kv):
    return "d0" if kv.role == "p" else "p0"


def desc(api):
    return api.CacheDesc(2, list(SHAPE), api.DataType.DT_FLOAT, api.Placement.DEVICE)


def host(node, tensors):
    return node.host(tensors)


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("actor", ["d", "p"])
def test_blocks(kv, datadist, actor):
    node = datadist(ID[kv.role], listen=True, local_comm_res="")
    api, other = node.api, other_of(kv)
    tensors = node.tensors(2, SHAPE, torch.float32, side=kv.role)
    cache = node.register_blocks_cache(desc(api), tensors, api.BlocksCacheKey(ID[kv.role], 0))
    kv.barrier("registered")
    if kv.role == actor:
        node.must_link_clusters([other])
        remote = api.BlocksCacheKey(ID[other[0]], 0)
        with node.measure("push_blocks", 2 * 2 * 16 * 4):
            node.cm.push_blocks(remote, cache, src_blocks=[0, 1], dst_blocks=[2, 3])
        with node.measure("pull_blocks", 2 * 16 * 4):
            node.cm.pull_blocks(remote, cache, src_blocks=[0], dst_blocks=[3])
    kv.barrier("moved")
    mine = node.expected(2, SHAPE, torch.float32, side=kv.role)
    theirs = node.expected(2, SHAPE, torch.float32, side=other[0])
    for got, m, t in zip(host(node, tensors), mine, theirs):
        if kv.role == actor:
            assert torch.equal(got[:3], m[:3]) and torch.equal(got[3], t[0])
        else:
            assert torch.equal(got[:2], m[:2]) and torch.equal(got[2:], t[:2])
    node.unlink_clusters([other], force=True)
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("actor", ["d", "p"])
def test_cache(kv, datadist, actor):
    node = datadist(ID[kv.role], listen=True, local_comm_res="")
    api, other = node.api, other_of(kv)
    tensors = node.tensors(2, SHAPE, torch.float32, side=kv.role)
    cache = node.register_cache(desc(api), tensors)
    kv.publish("cache_id", cache.cache_id)
    kv.barrier("registered")
    if kv.role == actor:
        node.must_link_clusters([other])
        remote_id = kv.fetch(other, "cache_id")
        kv.step("push_cache")
        node.cm.push_cache(api.CacheKeyByIdAndIndex(ID[other[0]], remote_id, 0), cache, src_batch_index=1)
        kv.step("pull_cache")
        node.cm.pull_cache(api.CacheKeyByIdAndIndex(ID[other[0]], remote_id, 2), cache, batch_index=3)
    kv.barrier("moved")
    node.unlink_clusters([other], force=True)
    node.unregister(cache)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_two_sided(kv, datadist):
    node = datadist(ID[kv.role] + 1, cache_manager=True)
    other = other_of(kv)
    comm = node.link([other])
    kv.barrier("linked")
    node.unlink(comm)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("actor", ["d", "p"])
def test_switch(kv, datadist, actor):
    node = datadist(ID[kv.role], local_comm_res="")  # a client until the actor switches
    api, other = node.api, other_of(kv)
    kv.barrier("created")
    if kv.role == actor:
        node.switch_role(api.LLMRole.PROMPT, listen=True)
    kv.barrier("switched")
    if kv.role != actor:
        ret, codes = node.link_clusters_to([other])
        assert ret == api.LLMStatusCode.LLM_SUCCESS, (ret, codes)
    kv.barrier("linked")
    node.unlink_clusters([other], force=True)
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("actor", ["d", "p"])
def test_async(kv, datadist, actor):
    node = datadist(ID[kv.role], listen=True, cache_manager=True, remote_cache_accessible=True)
    api, other = node.api, other_of(kv)
    tensors = node.tensors(2, SHAPE, torch.float32, side=kv.role)
    cache = node.register_blocks_cache(desc(api), tensors, api.BlocksCacheKey(ID[kv.role], 0))
    kv.barrier("registered")
    if kv.role == actor:

        class Ready(api.LayerSynchronizer):
            def synchronize_layer(self, layer_index, timeout_in_millis):
                return True

        node.must_link_clusters([other])
        config = api.TransferWithCacheKeyConfig(api.BlocksCacheKey(ID[other[0]], 0), range(0, 1), range(0, 1))
        kv.step("transfer_cache_async")
        task = node.cm.transfer_cache_async(cache, Ready(), [config])
        assert task.synchronize(10_000) == api.LLMStatusCode.LLM_SUCCESS, task.get_results()
    kv.barrier("moved")
    node.unlink_clusters([other], force=True)
    node.unregister(cache)
    node.finalize()
"""

#: api -> the flow test that calls it with ``{actor}`` the side whose process is to crash there
API_FLOW = {
    "init": "test_blocks[{actor}]",
    "register_blocks_cache": "test_blocks[{actor}]",
    "register_cache": "test_cache[{actor}]",
    "link_clusters": "test_blocks[{actor}]",
    "link": "test_two_sided",
    "push_blocks": "test_blocks[{actor}]",
    "pull_blocks": "test_blocks[{actor}]",
    "push_cache": "test_cache[{actor}]",
    "pull_cache": "test_cache[{actor}]",
    "transfer_cache_async": "test_async[{actor}]",
    "unlink_clusters": "test_blocks[{actor}]",
    "unlink": "test_two_sided",
    "switch_role": "test_switch[{actor}]",
    "finalize": "test_blocks[{actor}]",
}
#: apis whose crash runs by default (a setup and a transfer call on d, a link and an async transfer on
#: p); every other api, on both sides, in the full lane (KVTEST_HARNESS_FULL=1)
CORE = {
    "d": ("init", "push_blocks"),
    "p": ("link", "transfer_cache_async"),
}


def apis_for(side: str) -> list:
    """Every api, the ones outside ``CORE`` in the full lane (KVTEST_HARNESS_FULL=1)."""
    return [api if api in CORE[side] else pytest.param(api, marks=pytest.mark.full) for api in API_FLOW]


BEFORE_IDS = ["test_a_before.py::test_before_solo", "test_a_before.py::test_before_pair"]


def write_suite(path: Path) -> None:
    (path / "test_a_before.py").write_text(BEFORE)
    (path / "test_flows.py").write_text(FLOWS)


def flow_id(api: str, side: str) -> str:
    return "test_flows.py::" + API_FLOW[api].format(actor=side)


def run_faulted(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """Run the suite in local mode, in file order, with a long step timeout (a fault, not a slow
    step, must end each test) and JUnit times in j.xml."""
    return pytester.runpytest_subprocess(
        "-p", "no:randomly", *args, "--kv-timeout", "120", "--junitxml=j.xml"
    )


def junit_times(path: Path) -> dict[str, float]:
    root = ET.parse(path).getroot()
    return {case.get("name"): float(case.get("time")) for case in root.iter("testcase")}


def outcomes(results: Path) -> dict[str, str]:
    return {k: v["outcome"] for k, v in json.loads(results.read_text())["tests"].items()}


def test_flows_pass_without_faults(pytester: pytest.Pytester):
    """The flows themselves are sound: every fault test below fails because of its fault alone."""
    write_suite(pytester.path)
    result = pytester.runpytest_subprocess("-p", "no:randomly", "test_a_before.py", "test_flows.py")
    result.assert_outcomes(passed=11)


@pytest.mark.parametrize("api", apis_for("d"))
def test_dead_follower_at_every_api(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, api: str):
    """d0 dies at ``api``: p0 names it and the step within 10 s, the run fails, earlier results stay."""
    write_suite(pytester.path)
    flow = flow_id(api, "d")
    monkeypatch.setenv("KVTEST_SIM_FAULT", f"crash@{api}:d0")
    result = run_faulted(pytester, *BEFORE_IDS, flow, "--kv-results=r.json")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert re.search(rf"peer d0 died at step '{api}': its process \(pid \d+\) exited with code 70", out), out
    seconds = junit_times(pytester.path / "j.xml")[flow.split("::")[1]]
    print(f"p0 reported d0's death at {api}: test took {seconds:.2f}s")
    assert seconds < 10
    assert outcomes(pytester.path / "r.json") == {**dict.fromkeys(BEFORE_IDS, "passed"), flow: "failed"}
    assert "INTERNALERROR" not in out


def ends_and_marks(
    *procs, mark: str, or_line: str | None = None, timeout: float = 120
) -> tuple[list[float], float | None]:
    """Wait for every process (a hang fails the test); return when each ended and when the last
    one's ``-v`` output first reported test ``mark`` as FAILED (or printed ``or_line``)."""

    def reported() -> bool:
        text = procs[-1].log.read_text(errors="replace")
        if or_line is not None and or_line in text:
            return True
        return mark in text and "FAILED" in text.split(mark, 1)[1]

    ends: dict[int, float] = {}
    marked = None
    deadline = time.monotonic() + timeout
    while len(ends) < len(procs):
        if marked is None and reported():
            marked = time.monotonic()
        for i, p in enumerate(procs):
            if i not in ends and p.proc.poll() is not None:
                ends[i] = time.monotonic()
        if time.monotonic() > deadline:
            for p in procs:
                p.proc.kill()
            pytest.fail("a role did not end (a hang): " + " | ".join(p.log.read_text() for p in procs))
        time.sleep(0.02)
    if marked is None and reported():
        marked = time.monotonic()
    return [ends[i] for i in range(len(procs))], marked


@pytest.mark.parametrize("api", apis_for("p"))
def test_dead_leader_at_every_api(pytester: pytest.Pytester, start_role, port: int, api: str):
    """p0 dies at ``api``: d0 says the leader is gone within 10 s and exits 1; p0's results stay."""
    write_suite(pytester.path)
    flow = flow_id(api, "p")
    rdv = ["--rendezvous", f"tcp://127.0.0.1:{port}", "--kv-timeout", "120", "-p", "no:randomly"]
    p = start_role(
        "p",
        "--role",
        "p",
        *rdv,
        *BEFORE_IDS,
        flow,
        "--kv-results=r.json",
        env={"KVTEST_SIM_FAULT": f"crash@{api}:p0"},
    )
    d = start_role("d", "--role", "d", *rdv, *BEFORE_IDS, flow, "-v", env={"PYTHONUNBUFFERED": "1"})
    gone = "d0 lost the rendezvous store (hosted by p0): the leader is gone"
    # A crash late in the body (finalize) can come after d0's own part passed: d0 then reports the
    # leader gone when it waits for the next test, not as this test's failure. Both must be fast.
    (p_end, _), d_reported = ends_and_marks(p, d, mark=flow, or_line=gone)
    p_out, d_out = p.wait(), d.wait()
    assert p_out.returncode == 70, p_out.output
    # (the sim's "crashing p0" line goes to pytest's captured stderr, lost with the process)
    assert d_out.returncode == pytest.ExitCode.TESTS_FAILED, d_out.output
    assert gone in d_out.output
    assert "(d0's last step: " in d_out.output and f"in {flow}): stopping" in d_out.output
    assert "INTERNALERROR" not in d_out.output
    assert d_reported is not None, d_out.output
    detection = d_reported - p_end
    print(f"d0 reported p0's death {detection:.2f}s after it")
    assert detection < 10, f"d0 reported p0's death {detection:.1f}s after it"
    assert outcomes(pytester.path / "r.json") == dict.fromkeys(BEFORE_IDS, "passed")


@pytest.mark.full
def test_stalled_transfer_times_out_and_the_run_goes_on(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    write_suite(pytester.path)
    monkeypatch.setenv("KVTEST_SIM_FAULT", "stall@push_blocks:d0")
    result = run_faulted(pytester, "test_flows.py::test_blocks[d]", "test_flows.py::test_two_sided")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "d0 failed at step 'push_blocks': *LLMException: [[]push_blocks[]] failed, error code is "
            "LLMStatusCode.LLM_TIMEOUT, dst_cache_key = BlocksCacheKey(cluster_id=0, model_id=0).",
            "FAILED test_flows.py::test_blocks[[]d[]] - d0 failed at step 'push_blocks'*",
        ]
    )
    times = junit_times(pytester.path / "j.xml")
    assert times["test_blocks[d]"] < 10  # sim's sync_kv_timeout (1 s), not --kv-timeout (120 s)
    assert "ERROR" not in result.stdout.str()


def test_link_failure_reports_per_cluster_codes_and_tears_down(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
):
    write_suite(pytester.path)
    monkeypatch.setenv("KVTEST_SIM_FAULT", "linkfail:d0")
    result = run_faulted(
        pytester, "test_flows.py::test_blocks[d]", "test_flows.py::test_two_sided", *BEFORE_IDS
    )
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "d0 failed at step 'link_clusters': AssertionError: "
            "link_clusters to p0 failed: *LLM_LINK_FAILED*, per cluster [[]*LLM_LINK_FAILED*[]]*",
            "FAILED test_flows.py::test_blocks[[]d[]] - d0 failed at step 'link_clusters'*",
            "FAILED test_flows.py::test_two_sided - *0 failed at step 'link'*",
        ]
    )
    assert "at teardown" not in out and "teardown could not release" not in out, out
    assert out.count("Traceback") <= 2, out
    assert max(junit_times(pytester.path / "j.xml").values()) < 10
