"""Each fault kind once, in two processes: the byte checks and error paths must fail when they should."""

from __future__ import annotations

import time

import pytest
import sim_scenarios

from conftest import Peer, PeerFailed
from kvtest.backends import sim
from kvtest.backends.sim.faults import CRASH_EXIT_CODE, distort, parse_fault, parse_faults


@pytest.fixture(scope="module")
def shm_peer(tmp_path_factory):
    p = Peer(tmp_path_factory.mktemp("sim-fault-peer"), {})
    yield p
    p.close()


def test_flip_on_pull_is_caught_by_the_receiver(shm_peer, ports):
    with pytest.raises(PeerFailed, match=r"(?s)KV mismatch in tensor 0: .*block 1 of 4.*differing bytes: 1 of 1024 in block 1"):
        shm_peer.run("pull_blocks", ports, peer_env={"KVTEST_SIM_FAULT": "flip@pull_blocks:d0"})


def test_flip_on_push_is_caught_by_the_receiver(shm_peer, ports):
    with pytest.raises(AssertionError, match=r"(?s)KV mismatch in tensor 0 rows 0 and 2: .*block 0 of 2.*differing bytes: 1 of 40 in block 0"):
        shm_peer.run("push_blocks", ports, peer_env={"KVTEST_SIM_FAULT": "flip@push_blocks:d0"})


def test_flip_for_another_role_changes_nothing(shm_peer, ports):
    shm_peer.run("pull_blocks", ports, peer_env={"KVTEST_SIM_FAULT": "flip@pull_blocks:d1"})


def test_stall_ends_in_llm_timeout_after_sync_kv_timeout(shm_peer, ports):
    shm_peer.run("stall", ports, peer_env={"KVTEST_SIM_FAULT": "stall@pull_blocks:d0"})


def test_stall_scenario_fails_without_the_fault(shm_peer, ports):
    # the stall scenario expects LLM_TIMEOUT: with no fault the pull succeeds and the check says so
    with pytest.raises(PeerFailed, match=r"expected LLMException LLMStatusCode.LLM_TIMEOUT, nothing raised"):
        shm_peer.run("stall", ports)


def test_linkfail_one_sided_returns_link_failed_per_cluster(shm_peer, ports):
    with pytest.raises(
        PeerFailed, match=r"link failed: \(<LLMStatusCode.LLM_LINK_FAILED: \d+>, \[<LLMStatusCode"
    ):
        shm_peer.run("push_blocks", ports, peer_env={"KVTEST_SIM_FAULT": "linkfail@link_clusters:d0"})


def test_linkfail_two_sided_raises_link_failed(shm_peer, ports):
    with pytest.raises(
        PeerFailed, match=r"\[link\] failed, error code is LLMStatusCode.LLM_LINK_FAILED, \{1: 0, 2: 1\}\."
    ):
        shm_peer.run("pull_blocks", ports, peer_env={"KVTEST_SIM_FAULT": "linkfail@link"})


def test_crash_exits_the_peer_and_the_survivor_fails_fast(tmp_path, ports, monkeypatch):
    peer = Peer(tmp_path, {"KVTEST_SIM_FAULT": "crash@push_blocks:d0"}, once=True)
    try:
        began = time.monotonic()
        with pytest.raises(
            sim_scenarios.PeerFailed, match=r"p0 waiting for barrier 'push end': the peer process died"
        ):
            peer.run("push_blocks", ports)
        assert time.monotonic() - began < 15
        assert peer.wait_exit() == CRASH_EXIT_CODE
        assert "kvtest sim fault crash@push_blocks:d0: crashing d0" in peer.output()
    finally:
        peer.close()


def test_transfer_to_a_dead_peer_fails_with_a_code_not_a_hang(tmp_path, ports):
    """After d0 crashes mid-scenario, p0 pushing into d0's cache ends with a status code in time."""
    peer = Peer(tmp_path, {"KVTEST_SIM_FAULT": "crash@push_blocks:d0"}, once=True)
    ns = f"{peer.root}/dead"
    try:
        peer.store.set(
            f"{peer.root}/cmd/0",
            sim_scenarios.json.dumps(
                {"scenario": "push_blocks", "role": "d0", "namespace": ns, "params": ports, "env": {}}
            ),
        )
        sim.configure(peer.store, ns, "p0")
        ctx = sim_scenarios.Ctx(peer.store, ns, "p0", ports, peer.alive)
        dd = sim_scenarios.start(
            sim.LLMRole.PROMPT, 0, ports["p_port"], local_comm_res="", sync_kv_timeout=500
        )
        try:
            import torch

            from kvtest.backends.sim.device import to_device

            tensors = [to_device(torch.ones(3, 10)) for _ in range(2)]
            cache = dd.cache_manager.register_blocks_cache(
                sim.CacheDesc(2, [3, 10], sim.DataType.DT_FLOAT),
                [t.data_ptr() for t in tensors],
                sim.BlocksCacheKey(0, 0),
            )
            ctx.barrier("register end")
            assert peer.wait_exit() == CRASH_EXIT_CODE
            began = time.monotonic()
            with pytest.raises(sim.LLMException) as info:
                dd.cache_manager.push_blocks(sim.BlocksCacheKey(1, 0), cache, [0], [0])
            assert time.monotonic() - began < 5
            assert info.value.status_code in (sim.LLMStatusCode.LLM_TIMEOUT, sim.LLMStatusCode.LLM_FAILED)
            assert str(info.value).startswith("[push_blocks] failed, error code is LLMStatusCode.")
        finally:
            dd.finalize()
    finally:
        peer.close()


@pytest.mark.parametrize(
    ("text", "kind", "api", "role"),
    [
        ("flip", "flip", None, None),
        ("flip@pull_blocks:d0", "flip", "pull_blocks", "d0"),
        ("crash@push_blocks:d0", "crash", "push_blocks", "d0"),
        ("stall", "stall", None, None),
        ("linkfail:p1", "linkfail", None, "p1"),
        ("crash@init", "crash", "init", None),
        ("slow=1.5@pull_blocks:d0", "slow", "pull_blocks", "d0"),
    ],
)
def test_parse_fault_accepts(text, kind, api, role):
    fault = parse_fault(text)
    assert (fault.kind, fault.api, fault.role) == (kind, api, role)
    assert str(fault) == text


def test_slow_takes_a_factor():
    assert parse_fault("slow=1.5@pull_blocks:d0").factor == 1.5
    assert parse_fault("slow:d0").factor == 2.0  # the default: half the bandwidth
    assert str(parse_fault("slow@push_blocks")) == "slow=2@push_blocks"
    assert parse_fault("flip").factor is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (
            "boom",
            r"invalid KVTEST_SIM_FAULT kind 'boom' in 'boom'; accepted: <kind>\[=<factor>\]\[@<api>\]"
            r"\[:<role><rank>\], kind one of flip\|stall\|linkfail\|crash\|slow",
        ),
        (
            "flip@link",
            r"invalid KVTEST_SIM_FAULT api 'link' for flip in 'flip@link'; accepted apis: pull_cache",
        ),
        ("flip:d", r"invalid KVTEST_SIM_FAULT value 'flip:d'; accepted: "),
        ("", r"invalid KVTEST_SIM_FAULT value ''"),
        ("stall@pull_blocks:d0:x", r"invalid KVTEST_SIM_FAULT value 'stall@pull_blocks:d0:x'"),
        ("slow=1@pull_blocks", r"invalid KVTEST_SIM_FAULT factor '1' in 'slow=1@pull_blocks': slow=<factor> "
                               r"takes a number above 1 and at most 100, e.g. slow=1.5"),
        ("slow=fast", r"invalid KVTEST_SIM_FAULT factor 'fast' in 'slow=fast'"),
        ("slow=inf", r"invalid KVTEST_SIM_FAULT factor 'inf'"),
        ("slow=", r"invalid KVTEST_SIM_FAULT factor '' in 'slow='"),
        ("flip=2@pull_blocks",
         r"invalid KVTEST_SIM_FAULT value 'flip=2@pull_blocks': only slow\|relinkrace takes =<factor>"),
        ("relinkrace=1.5", r"invalid KVTEST_SIM_FAULT count '1.5' in 'relinkrace=1.5': relinkrace=<n> takes a "
                           r"whole number from 1 to 100, e.g. relinkrace=3"),
        ("relinkrace=0:d0", r"invalid KVTEST_SIM_FAULT count '0'"),
        ("relinkrace=x", r"invalid KVTEST_SIM_FAULT count 'x'"),
        ("relinkrace@pull_blocks", r"invalid KVTEST_SIM_FAULT api 'pull_blocks' for relinkrace"),
        ("slow@link", r"invalid KVTEST_SIM_FAULT api 'link' for slow in 'slow@link'; accepted apis: pull_cache"),
    ],
)
def test_parse_fault_rejects_with_the_accepted_forms(text, match):
    with pytest.raises(ValueError, match=match):
        parse_fault(text)


def test_relinkrace_counts_the_relinks_it_hits():
    assert parse_fault("relinkrace:d0").factor == 1 and str(parse_fault("relinkrace=3:d0")) == "relinkrace=3:d0"
    assert parse_fault("relinkrace").applies("link", "p0") and not parse_fault("relinkrace").applies("link_clusters", "p0")


def test_fault_applies_by_api_and_role():
    fault = parse_fault("flip@pull_blocks:d0")
    assert fault.applies("pull_blocks", "d0")
    assert not fault.applies("pull_blocks", "p0")
    assert not fault.applies("pull_cache", "d0")
    assert parse_fault("crash").applies("push_cache", "p3")
    assert not parse_fault("crash").applies("init", "p3")


def test_parse_faults_takes_several_comma_separated():
    faults = parse_faults("drop@pull_cache:d0,lie@link_clusters:p0")
    assert [str(f) for f in faults] == ["drop@pull_cache:d0", "lie@link_clusters:p0"]
    with pytest.raises(ValueError, match=r"invalid KVTEST_SIM_FAULT api 'link' for mapping in 'mapping@link'"):
        parse_faults("drop@pull_cache:d0,mapping@link")


PAIRS = [(0, 0), (1, 1), (2, 2)]
SPANS = [(0, 0, 8), (16, 8, 8)]  # two 8-byte blocks: src block 0 -> dst 0, src 2 -> dst 1


@pytest.mark.parametrize(
    ("kind", "dst_bytes", "pairs", "spans"),
    [
        ("misplace", 32, PAIRS, [(0, 8, 8), (16, 8, 8)]),  # dst block 0's bytes go to block 1
        ("misplace", 16, PAIRS, [(0, 8, 8), (16, 8, 8)]),
        ("misplace", 8, PAIRS, SPANS),  # a one-block destination: nowhere else to land
        ("drop", 32, PAIRS, [(0, 0, 8)]),
        ("partial", 32, PAIRS, [(0, 0, 4), (16, 8, 4)]),
        ("swaptensors", 32, [(0, 1), (1, 0), (2, 2)], SPANS),
    ],
)
def test_distort_moves_the_wrong_bytes(kind, dst_bytes, pairs, spans):
    assert distort(kind, list(PAIRS), list(SPANS), dst_bytes) == (pairs, spans)


def test_distort_never_writes_outside_the_destination():
    _, spans = distort("misplace", [(0, 0)], [(0, 24, 8)], 32)
    assert spans == [(0, 16, 8)]  # the last block moves back one, not past the end
