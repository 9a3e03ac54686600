"""The sim behaves as the real llm_datadist source does, one finding of issue 11 per test.

Each test names the hicann/hixl file it follows; docs/sim.md's behaviour table points here. Each one
failed against the sim before issue 11 (the old behaviour is in the test's comment).
"""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest
import torch
from test_sim_contract import RANK_TABLE, FakePeer, blocks_cache, linked, make

from kvtest import patterns
from kvtest.backends import sim
from kvtest.backends.sim import context, control, device
from kvtest.backends.sim.backend import SimBackend
from kvtest.backends.sim.device import to_device
from kvtest.backends.sim.listener import Listener
from kvtest.backends.sim.upstream import ENV_VAR as FIXED_ENV
from kvtest.backends.sim.upstream import parse_fixed
from kvtest.node import free_port

S = sim.LLMStatusCode
U64 = 2**64 - 1

#: hicann/hixl src/python/llm_datadist/llm_datadist/status.py, in order
REAL_STATUS = [
    "LLM_SUCCESS", "LLM_FAILED", "LLM_PARAM_INVALID", "LLM_WAIT_PROCESS_TIMEOUT", "LLM_KV_CACHE_NOT_EXIST",
    "LLM_REPEAT_REQUEST", "LLM_REQUEST_ALREADY_COMPLETED", "LLM_ENGINE_FINALIZED", "LLM_NOT_YET_LINK",
    "LLM_ALREADY_LINK", "LLM_LINK_FAILED", "LLM_UNLINK_FAILED", "LLM_NOTIFY_PROMPT_UNLINK_FAILED",
    "LLM_CLUSTER_NUM_EXCEED_LIMIT", "LLM_PROCESSING_LINK", "LLM_DEVICE_OUT_OF_MEMORY",
    "LLM_PREFIX_ALREADY_EXIST", "LLM_PREFIX_NOT_EXIST", "LLM_SEQ_LENOVERLIMIT", "LLM_NO_FREE_BLOCK",
    "LLM_BLOCKS_OUT_OF_MEMORY", "LLM_EXIST_LINK", "LLM_FEATURE_NOT_ENABLED", "LLM_TIMEOUT", "LLM_LINK_BUSY",
    "LLM_OUT_OF_MEMORY", "LLM_DEVICE_MEM_ERROR", "LLM_SUSPECT_REMOTE_ERROR", "LLM_UNKNOWN_ERROR",
]  # fmt: skip


@pytest.fixture
def plane(configured) -> control.ControlPlane:
    current = context.current()
    assert current is not None
    return current.plane


@pytest.fixture
def fake_peer(plane):
    peer = FakePeer(plane, 9)
    yield peer
    peer.close()


class Ready(sim.LayerSynchronizer):
    def __init__(self) -> None:
        self.asked: list[int] = []

    def synchronize_layer(self, layer_index: int, timeout_in_millis: Any) -> bool:
        self.asked.append(layer_index)
        return True


def export_cache(peer: FakePeer, tensors: list[torch.Tensor], keys: dict[tuple[int, int, int], dict[str, Any]]):
    """The fake peer publishes a (non-blocks) cache 1 and key records, as a bind would."""
    peer.tensors = tensors
    peer.transport.register([(t.data_ptr(), t.numel() * t.element_size()) for t in tensors])
    peer._publish()
    record = {
        "addrs": [t.data_ptr() for t in tensors],
        "slot_bytes": tensors[0][0].numel() * tensors[0].element_size(),
        "batch": tensors[0].shape[0],
        "blocks": False,
    }
    peer.plane.put(peer.plane.key("cache", peer.cluster_id, 1), record)
    for (req, model, prefix), fields in keys.items():
        peer.plane.put(peer.plane.key("key", peer.cluster_id, req, model, prefix), {"cache_id": 1, **fields})


def key_record(plane: control.ControlPlane, cluster: int, req: int, prefix: int = U64) -> Any:
    return plane.fetch(plane.key("key", cluster, req, 0, prefix))


# -- status codes and value types (v2/llm_types.py, status.py) ------------------------------------
def test_status_code_members_are_the_real_ones():
    # before: 19 members, LLM_REPEAT_REQUEST ... LLM_SUSPECT_REMOTE_ERROR missing
    assert [m.name for m in S] == REAL_STATUS
    assert S.LLM_REPEAT_REQUEST == 0x5010B003 and S.LLM_ENGINE_FINALIZED == 0x5010B006
    assert S.LLM_BLOCKS_OUT_OF_MEMORY == 0x5010B013 and S.LLM_OUT_OF_MEMORY == 0x5010B01C
    assert S.LLM_DEVICE_MEM_ERROR == 507053 and S.LLM_SUSPECT_REMOTE_ERROR == 507057


def test_cache_key_needs_req_id():
    # before: req_id defaulted to UINT64_MAX
    with pytest.raises(sim.LLMException, match=r"^Param req_id is required$"):
        sim.CacheKey(1)
    with pytest.raises(sim.LLMException, match=r"^Param prompt_cluster_id or cluster_id is required$"):
        sim.CacheKey(req_id=1)
    assert sim.CacheKey(1, U64, prefix_id=4).prefix_id == 4


# -- caches and keys (cache_manager.cc, data_cache_engine.cc, fsm/send_state.cc) ------------------
def test_keys_cluster_id_is_ignored_when_binding(plane):
    # before: LLM_PARAM_INVALID "cache key ... should use the local cluster id 1"
    d = make(mem_pool_cfg='{"memory_size": 65536}')
    try:
        cm = d.cache_manager
        desc = sim.CacheDesc(2, [2, 16], sim.DataType.DT_FLOAT)
        cm.allocate_cache(desc, [sim.CacheKey(5, 7)])
        assert key_record(plane, 1, 7)["cache_id"] == 1
        tensors = [to_device(torch.zeros(2, 16)) for _ in range(2)]
        cm.register_cache(desc, [t.data_ptr() for t in tensors], [sim.CacheKey(6, 8)])
        assert key_record(plane, 1, 8)["cache_id"] == 2
        blocks_cache(d, key=sim.BlocksCacheKey(5, 3))
        assert plane.fetch(plane.key("bkey", 1, 3)) == {"cache_id": 3}
    finally:
        d.finalize()


def test_which_keys_a_pull_may_consume(plane):
    # before: every key record was consumed by a pull (no "consumable" field)
    d = make(mem_pool_cfg='{"memory_size": 65536}')
    try:
        cm = d.cache_manager
        desc = sim.CacheDesc(2, [2, 16], sim.DataType.DT_FLOAT)
        cm.allocate_cache(desc, [sim.CacheKey(1, 1), sim.CacheKey(1, U64, prefix_id=2)])
        tensors = [to_device(torch.zeros(2, 16)) for _ in range(2)]
        cm.register_cache(desc, [t.data_ptr() for t in tensors], [sim.CacheKey(1, 3)])
        assert key_record(plane, 1, 1)["consumable"] is True  # pool cache, req_id key
        assert key_record(plane, 1, U64, prefix=2)["consumable"] is False  # prefix key
        assert key_record(plane, 1, 3)["consumable"] is False  # registered cache
        cm.remove_cache_key(sim.CacheKey(1, 3))  # a registered cache's key: RemoveCacheKey skips it
        assert key_record(plane, 1, 3) is not None
        cm.remove_cache_key(sim.CacheKey(1, 1))
        assert key_record(plane, 1, 1) is None
    finally:
        d.finalize()


def test_pull_leaves_unconsumable_keys_and_partial_layer_pulls(plane, fake_peer):
    # before: any successful pull released the key, so the second pull got LLM_KV_CACHE_NOT_EXIST
    src = [torch.arange(32.0).reshape(2, 16) + 100 * i for i in range(4)]
    export_cache(
        fake_peer,
        src,
        {
            (1, 0, U64): {"batch_index": 0, "consumable": False, "tensors": [0, 1, 2, 3]},
            (2, 0, U64): {"batch_index": 1, "consumable": True, "tensors": [0, 1, 2, 3]},
        },
    )
    d = make()
    linked(d, fake_peer)
    dst = [to_device(torch.zeros(2, 16)) for _ in range(4)]
    cache = d.cache_manager.register_cache(
        sim.CacheDesc(4, [2, 16], sim.DataType.DT_FLOAT), [t.data_ptr() for t in dst]
    )
    cm = d.cache_manager
    cm.pull_cache(sim.CacheKey(9, 1), cache, 0)
    cm.pull_cache(sim.CacheKey(9, 1), cache, 0)  # not consumed: a registered cache upstream
    assert torch.equal(dst[3][0], src[3][0])
    layer0 = {"src_layer_range": range(0, 1), "dst_layer_range": range(0, 1)}
    cm.pull_cache(sim.CacheKey(9, 2), cache, 1, **layer0)
    assert key_record(plane, 9, 2)["tensors"] == [2, 3]  # layer 1's tensors not pulled yet
    cm.pull_cache(sim.CacheKey(9, 2), cache, 1, src_layer_range=range(1, 2), dst_layer_range=range(1, 2))
    assert key_record(plane, 9, 2) is None
    assert all(torch.equal(dst[i][1], src[i][1]) for i in range(4))
    with pytest.raises(sim.LLMException, match=r"LLM_KV_CACHE_NOT_EXIST"):
        cm.pull_cache(sim.CacheKey(9, 2), cache, 1)


def test_unregister_an_unknown_cache_is_success(dd_plain):
    # before: [unregister_cache] failed, error code is LLMStatusCode.LLM_PARAM_INVALID
    dd_plain.cache_manager.unregister_cache(42)


def test_unregister_a_pool_cache_drops_its_entry(plane):
    # UnregisterCacheEntry erases the entry, whose shared pointers held the pool memory
    d = make(mem_pool_cfg='{"memory_size": 65536}')
    try:
        cm = d.cache_manager
        cache = cm.allocate_cache(sim.CacheDesc(2, [2, 16], sim.DataType.DT_FLOAT), [sim.CacheKey(1, 4)])
        assert d._pools["DEVICE"].bytes_in_use > 0
        cm.unregister_cache(cache.cache_id)
        assert d._pools["DEVICE"].bytes_in_use == 0 and key_record(plane, 1, 4) is None
    finally:
        d.finalize()


@pytest.fixture
def dd_plain(plane):
    d = make()
    yield d
    d.finalize()


# -- device memory (comm_mem_manager.cc RegisterCacheMem) -----------------------------------------
def test_host_memory_registered_as_device_is_refused(dd_plain):
    # before: accepted (the sim registered any CPU memory)
    cm = dd_plain.cache_manager
    desc = sim.CacheDesc(2, [3, 10], sim.DataType.DT_FLOAT)
    host = [torch.zeros(3, 10) for _ in range(2)]
    with pytest.raises(
        sim.LLMException,
        match=r"^\[register_cache\] failed, error code is LLMStatusCode\.LLM_FAILED, cache_desc = CacheDesc\(",
    ) as e:
        cm.register_cache(desc, [t.data_ptr() for t in host])
    assert e.value.status_code == S.LLM_FAILED
    assert "is not device memory" in str(e.value.__cause__)  # the sim's explanation, chained
    with pytest.raises(sim.LLMException, match=r"LLM_FAILED"):
        cm.register_blocks_cache(desc, [t.data_ptr() for t in host])
    # not remote accessible: nothing is registered with the transport upstream, so nothing to refuse
    cm.register_cache(desc, [t.data_ptr() for t in host], remote_accessible=False)
    cm.register_cache(
        sim.CacheDesc(2, [3, 10], sim.DataType.DT_FLOAT, sim.Placement.HOST), [t.data_ptr() for t in host]
    )
    on_device = [SimBackend(sim).to_device(t) for t in host]
    cm.register_cache(desc, [t.data_ptr() for t in on_device])


def test_device_memory_is_what_to_device_and_the_device_pool_made(plane):
    t = to_device(torch.zeros(64))
    assert device.is_device(t.data_ptr(), 256) and not device.is_device(t.data_ptr(), 257)
    assert not device.is_device(torch.zeros(64).data_ptr(), 4)
    d = make(mem_pool_cfg='{"memory_size": 65536}')
    pool = d._pools["DEVICE"]
    assert device.is_device(pool.base, pool.size)
    d.finalize()
    assert not device.is_device(pool.base, pool.size)


def test_memory_written_on_the_device_is_device_memory_with_the_bytes_written(plane):
    """make_on_device (what Node.tensors fills caches with): the written bytes, counted as device
    memory (a DEVICE registration takes it) while the tensor lives, and never a shared buffer."""
    backend = SimBackend(sim)
    want = patterns.pattern([4, 1 << 18], torch.float16, seed=7, tensor_index=1, side="p")
    made = backend.make_on_device([4, 1 << 18], torch.float16,
                                  partial(patterns.fill, seed=7, tensor_index=1, side="p"))
    assert made.shape == (4, 1 << 18) and made.dtype == torch.float16 and made.is_contiguous()
    assert patterns.same_bytes(made, want)
    nbytes = made.numel() * 2
    assert device.is_device(made.data_ptr(), nbytes)
    other = backend.make_on_device([4, 1 << 18], torch.float16, torch.Tensor.zero_)
    assert other.data_ptr() != made.data_ptr() and patterns.same_bytes(made, want)
    start = made.data_ptr()
    del made
    assert not device.is_device(start, nbytes)


def test_memory_collected_during_a_lookup_does_not_deadlock_it():
    """The garbage collector may run a finalizer (``remove``) inside an allocation made while the
    lookup holds the lock, in the same thread: remove must not wait for that lock."""
    import threading

    t = to_device(torch.zeros(16))
    start = t.data_ptr()
    token = device.add(start, 64)
    remover = threading.Thread(target=device.remove, args=(token,), daemon=True)
    with device._lock:  # as if is_device were holding it when the collector ran the finalizer
        remover.start()
        remover.join(2.0)
        assert not remover.is_alive(), "remove() waited for the lock its own thread holds: a deadlock"
    del t
    assert not device.is_device(start, 64)


# -- links (llm_link_manager.cc, link_msg_handler.cc, comm_entity_manager.cc) --------------------
def _info(cluster: int, port: int | None, remote_ips: int = 1) -> sim.LLMClusterInfo:
    info = sim.LLMClusterInfo()
    info.remote_cluster_id = cluster
    info.append_local_ip_info("127.0.0.1", 0)
    for _ in range(remote_ips):
        info.append_remote_ip_info("127.0.0.1", port or 1)
    return info


def test_link_clusters_has_no_16_cluster_limit(dd_plain):
    # before: LLM_CLUSTER_NUM_EXCEED_LIMIT for every cluster
    closed = free_port("127.0.0.1")
    code, codes = dd_plain.link_clusters([_info(5, closed)] * 17, 2000)
    assert code == S.LLM_LINK_FAILED and codes == [S.LLM_LINK_FAILED] * 17
    assert dd_plain.link_clusters([], 2000) == (S.LLM_PARAM_INVALID, [])  # "clusters size must > 0"
    assert dd_plain.link_clusters([_info(5, closed, remote_ips=2)], 2000) == (
        S.LLM_PARAM_INVALID,
        [S.LLM_PARAM_INVALID],
    )  # "remote_ip_infos size != 1 is unsupported."


def test_unlink_clusters_rules(dd_plain):
    # before: LLM_NOT_YET_LINK for a cluster never linked, whatever the ips
    port = free_port("127.0.0.1")
    server = Listener("127.0.0.1", port, 9)
    try:
        assert dd_plain.unlink_clusters([_info(9, port)], force=True) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert dd_plain.unlink_clusters([_info(9, port)]) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        for ips in (0, 2):
            assert dd_plain.unlink_clusters([_info(9, port, remote_ips=ips)]) == (
                S.LLM_PARAM_INVALID,
                [S.LLM_PARAM_INVALID],
            )
        assert dd_plain.unlink_clusters([_info(9, port, remote_ips=0)], force=True)[0] == S.LLM_SUCCESS
    finally:
        server.close()
    closed = free_port("127.0.0.1")
    assert dd_plain.unlink_clusters([_info(9, closed)]) == (S.LLM_UNLINK_FAILED, [S.LLM_UNLINK_FAILED])
    assert dd_plain.unlink_clusters([]) == (S.LLM_PARAM_INVALID, [])


def test_hixl_backend_link_semantics(plane, fake_peer):
    # before: link/unlink/query worked, link_clusters made a server entry on the peer, unlink
    # ended both ends, switch_role was refused while linked and could move the listen port
    port = free_port("127.0.0.1")
    d = make(
        listen_ip_info=f"127.0.0.1:{port}", enable_remote_cache_accessible=True, transfer_backend="hixl"
    )
    try:
        not_enabled = r"error code is LLMStatusCode\.LLM_FEATURE_NOT_ENABLED"
        with pytest.raises(sim.LLMException, match=rf"^\[link\] failed, {not_enabled}") as e:
            d.link("c", {1: 0, 9: 1}, RANK_TABLE)
        assert e.value.status_code == S.LLM_FEATURE_NOT_ENABLED
        with pytest.raises(sim.LLMException, match=rf"^\[query_register_mem_status\] failed, {not_enabled}"):
            d.query_register_mem_status(1)
        with pytest.raises(sim.LLMException, match=rf"^\[unlink\] failed, {not_enabled}"):
            d.unlink(1)
        peer_port = free_port("127.0.0.1")
        server = Listener("127.0.0.1", peer_port, 9)
        try:
            assert d.link_clusters([_info(9, peer_port)], 2000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
            assert plane.fetch(plane.key("links", 1)) == {"9": ["client"]}
            assert not plane.fetch(plane.key("links", 9)), "a HIXL link is an entity on the client only"
            d.switch_role(sim.LLMRole.DECODER)  # no LLM_EXIST_LINK check in HixlTransferEngine::SwitchRole
            with pytest.raises(sim.LLMException, match=rf"^\[switch_role\] failed, {not_enabled}"):
                d.switch_role(sim.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{free_port('127.0.0.1')}"})
            d.switch_role(sim.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"})
            # non-forced and without a remote ip, still local only, still SUCCESS
            assert d.unlink_clusters([_info(9, None, remote_ips=0)]) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
            assert plane.fetch(plane.key("links", 1)) == {}
        finally:
            server.close()
    finally:
        d.finalize()


# -- transfer_cache_async (v2/llm_utils.py, layer_wise_transfer_job.cc) --------------------------
def _async_setup(peer: FakePeer, layers: int, **options: Any):
    d = make(enable_remote_cache_accessible=True, **options)
    shape = (3, 4)
    src = [to_device(torch.arange(12.0).reshape(shape) + 100 * i) for i in range(2 * layers)]
    cache = d.cache_manager.register_blocks_cache(
        sim.CacheDesc(2 * layers, list(shape), sim.DataType.DT_FLOAT), [t.data_ptr() for t in src]
    )
    dst = [torch.zeros(shape) for _ in range(2 * layers)]
    peer.export_blocks(dst)
    linked(d, peer)
    return d, cache, src, dst


def test_async_without_block_indices_moves_one_block(plane, fake_peer):
    # before: every block arrived
    d, cache, src, dst = _async_setup(fake_peer, 1)
    config = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(9), range(0, 1), range(0, 1))
    task = d.cache_manager.transfer_cache_async(cache, Ready(), [config])
    assert task.synchronize(5000) == S.LLM_SUCCESS
    for i in range(2):
        assert torch.equal(dst[i][0], src[i][0]), "block 0 arrives (one stride)"
        assert torch.equal(dst[i][1:], torch.zeros(2, 4)), "blocks 1.. do not"
    every = [0, 1, 2]
    task = d.cache_manager.transfer_cache_async(
        cache, Ready(), [config], src_block_indices=every, dst_block_indices=every, dst_block_memory_size=0
    )  # before: dst_block_memory_size=0 was a ValueError; upstream it means omitted
    assert task.synchronize(5000) == S.LLM_SUCCESS
    assert all(torch.equal(dst[i], src[i]) for i in range(2))
    with pytest.raises(sim.LLMException, match=r"^dst_block_memory_size \(5\) is neither None nor 0"):
        d.cache_manager.transfer_cache_async(cache, Ready(), [config], dst_block_memory_size=5)


def _thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    seen: list[type[BaseException]] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(args.exc_type))
    return seen


def test_async_dst_layer_is_the_absolute_source_index(plane, fake_peer, monkeypatch):
    # before: layer 1 of range(1, 2) went to dst layer 0, layers 0 and 2 were synchronized too,
    # and a config that never finished made synchronize() return LLM_FAILED
    errors = _thread_errors(monkeypatch)
    d, cache, src, dst = _async_setup(fake_peer, 3)
    ready = Ready()
    config = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(9), range(1, 2), range(0, 1))
    every = [0, 1, 2]
    task = d.cache_manager.transfer_cache_async(cache, ready, [config], every, every)
    assert task.synchronize(5000) == S.LLM_SUCCESS  # the dead worker's missing result is skipped
    assert task.get_results(5000) == [None]
    assert ready.asked == [1], "layers no config uses are not synchronized"
    assert errors == [IndexError]
    assert all(torch.equal(t, torch.zeros(3, 4)) for t in dst), "nothing arrived"


def test_async_with_the_fix_emulated(plane, fake_peer, monkeypatch):
    monkeypatch.setenv(FIXED_ENV, "transfer-layers-absolute-dst-index")
    sim.configure(plane.store, plane.namespace, plane.role)  # the fixes are read where it is configured
    d, cache, src, dst = _async_setup(fake_peer, 3)
    config = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(9), range(1, 3), range(0, 2))
    every = [0, 1, 2]
    task = d.cache_manager.transfer_cache_async(cache, Ready(), [config], every, every)
    assert task.get_results(5000) == [S.LLM_SUCCESS]
    assert [torch.equal(dst[i], src[i + 2]) for i in range(4)] == [True] * 4
    assert torch.equal(dst[4], torch.zeros(3, 4))


def test_sim_fixed_names_only_reproduced_issues():
    assert parse_fixed(" transfer-layers-absolute-dst-index ,") == {"transfer-layers-absolute-dst-index"}
    with pytest.raises(ValueError, match=r"^nope is not an issue the sim reproduces; accepted: transfer-"):
        parse_fixed("nope")


def test_async_link_problems_are_result_codes(plane, fake_peer):
    # before: transfer_cache_async raised LLM_NOT_YET_LINK / LLM_KV_CACHE_NOT_EXIST at the call
    d, cache, src, dst = _async_setup(fake_peer, 1)
    missing = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(9, 7), range(0, 1), range(0, 1))
    task = d.cache_manager.transfer_cache_async(cache, Ready(), [missing])
    assert task.get_results(5000) == [S.LLM_KV_CACHE_NOT_EXIST]
    too_far = sim.TransferWithCacheKeyConfig(sim.CacheKeyByIdAndIndex(9, 1, 1), range(0, 1), range(0, 1))
    task = d.cache_manager.transfer_cache_async(cache, Ready(), [too_far])
    assert task.get_results(5000) == [S.LLM_PARAM_INVALID]  # a blocks cache has batch_size 1 upstream
