"""The sim module's API contract in one process: names, types, ranges, messages and status codes.

Transfers here go to a fake peer: a second NIXL agent in this process whose records are published
the way a real peer publishes them, so even single-process tests move bytes through NIXL.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
import torch

from kvtest.backends import sim
from kvtest.backends.sim import context, control
from kvtest.backends.sim.device import to_device
from kvtest.backends.sim.listener import Listener
from kvtest.backends.sim.transport import Transport
from kvtest.node import free_port

S = sim.LLMStatusCode
RANK_TABLE = json.dumps({"version": "1.2", "server_count": "1", "server_list": []})


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def plane(configured) -> control.ControlPlane:
    current = context.current()
    assert current is not None
    return current.plane


def make(cluster_id=1, role=sim.LLMRole.PROMPT, **options):
    config = sim.LLMConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    for name, value in options.items():
        setattr(config, name, value)
    dd = sim.LLMDataDist(role, cluster_id)
    dd.init(config.generate_options())
    return dd


@pytest.fixture
def dd(plane):
    d = make()
    yield d
    d.finalize()


class FakePeer:
    """Another cluster inside this process: its own NIXL agent plus the records a peer publishes."""

    def __init__(self, plane: control.ControlPlane, cluster_id: int) -> None:
        self.plane, self.cluster_id = plane, cluster_id
        self.transport = Transport(f"fake-{uuid.uuid4().hex[:8]}")
        self.version = 0
        self.tensors: list[torch.Tensor] = []
        self._publish()

    def _publish(self) -> None:
        self.version += 1
        meta = control.encode_bytes(self.transport.metadata())
        record = {"agent": self.transport.name, "meta": meta, "version": self.version, "role": "x9", "pid": 0}
        self.plane.put(self.plane.key("agent", self.cluster_id), record)

    def join(self, comm_name: str, ranks: dict[int, int]) -> None:
        self.plane.put(
            self.plane.key("comm", comm_name, self.cluster_id),
            {"agent": self.transport.name, "ranks": {str(k): v for k, v in ranks.items()}},
        )

    def export_blocks(self, tensors: list[torch.Tensor], cache_id: int = 1, model_id: int = 0) -> None:
        self.tensors = tensors
        self.transport.register([(t.data_ptr(), t.numel() * t.element_size()) for t in tensors])
        self._publish()
        record = {
            "addrs": [t.data_ptr() for t in tensors],
            "slot_bytes": tensors[0][0].numel() * tensors[0].element_size(),
            "batch": tensors[0].shape[0],
            "blocks": True,
        }
        self.plane.put(self.plane.key("cache", self.cluster_id, cache_id), record)
        self.plane.put(self.plane.key("bkey", self.cluster_id, model_id), {"cache_id": cache_id})

    def close(self) -> None:
        self.transport.close()


@pytest.fixture
def fake_peer(plane):
    peer = FakePeer(plane, 9)
    yield peer
    peer.close()


def linked(dd: sim.LLMDataDist, peer: FakePeer) -> int:
    peer.join("c", {1: 0, 9: 1})
    comm = dd.link("c", {1: 0, 9: 1}, RANK_TABLE)
    assert dd.query_register_mem_status(comm) == sim.RegisterMemStatus.OK
    return comm


def blocks_cache(dd, shape=(4, 8), key=None, **kw):
    tensors = [to_device(torch.zeros(shape)) for _ in range(2)]
    desc = sim.CacheDesc(2, list(shape), sim.DataType.DT_FLOAT)
    return tensors, dd.cache_manager.register_blocks_cache(desc, [t.data_ptr() for t in tensors], key, **kw)


# -- module surface and lifecycle ---------------------------------------------------------------
def test_exports_the_llm_datadist_names():
    for name in [
        "LLMDataDist",
        "LLMConfig",
        "LlmConfig",
        "LLMRole",
        "CacheDesc",
        "CacheKey",
        "CacheKeyByIdAndIndex",
        "BlocksCacheKey",
        "Cache",
        "DataType",
        "Placement",
        "RegisterMemStatus",
        "LLMClusterInfo",
        "LLMStatusCode",
        "LLMException",
        "LayerSynchronizer",
        "TransferWithCacheKeyConfig",
        "TransferConfig",
        "CacheTask",
        "configure",
        "create_tensors",
    ]:
        assert hasattr(sim, name), name
    assert sim.LlmConfig is sim.LLMConfig
    assert issubclass(sim.LLMException, RuntimeError)


def test_status_codes_use_the_cpp_header_values():
    assert S.LLM_SUCCESS == 0 and S.LLM_FAILED == 0xFFFFFFFF
    assert S.LLM_KV_CACHE_NOT_EXIST == 0x5010B002 and S.LLM_PARAM_INVALID == 0x5010B005
    assert S.LLM_NOT_YET_LINK == 0x5010B007 and S.LLM_LINK_FAILED == 0x5010B009
    assert S.LLM_EXIST_LINK == 0x5010B018 and S.LLM_TIMEOUT == 0x5010B01A
    assert str(S.LLM_TIMEOUT) == "LLMStatusCode.LLM_TIMEOUT"


@pytest.mark.parametrize(
    "call",
    [
        lambda d: d.cache_manager,
        lambda d: d.link("c", {1: 0, 2: 1}, RANK_TABLE),
        lambda d: d.link_clusters([]),
        lambda d: d.unlink_clusters([]),
        lambda d: d.switch_role(sim.LLMRole.DECODER),
        lambda d: d.query_register_mem_status(1),
    ],
)
def test_calls_before_init_raise_runtime_error(call):
    with pytest.raises(RuntimeError, match=r"^llm datadist is not initialized$"):
        call(sim.LLMDataDist(sim.LLMRole.PROMPT, 1))


def test_init_without_configure_names_configure(monkeypatch):
    monkeypatch.setattr(context, "_bound", None)
    monkeypatch.delenv(control.STORE_VAR, raising=False)
    with pytest.raises(
        sim.LLMException,
        match=r"not configured: start the program with `kvtest run` .* or set KVTEST_SIM_STORE=",
    ) as e:
        make()
    assert e.value.status_code == S.LLM_FAILED
    assert str(e.value).startswith("[LLMDataDist.init] failed, error code is LLMStatusCode.LLM_FAILED, ")


def test_one_initialized_instance_per_process(dd):
    dd.init({})  # a second init of the same object does nothing
    with pytest.raises(sim.LLMException, match=r"^Cannot init multiple LLMDataDists$") as e:
        make(cluster_id=2)
    assert e.value.status_code == S.LLM_FAILED
    dd.finalize()
    dd.finalize()
    make(cluster_id=2).finalize()


def test_constructor_checks_types_and_ranges():
    with pytest.raises(TypeError, match=r"^role only support \['LLMRole'\], but got <class 'int'>\.$"):
        sim.LLMDataDist(1, 1)
    with pytest.raises(ValueError, match=r"^cluster_id's value is out of range"):
        sim.LLMDataDist(sim.LLMRole.PROMPT, -1)


def test_cache_manager_needs_cache_manager_mode(plane):
    d = sim.LLMDataDist(sim.LLMRole.PROMPT, 1)
    # without llm.EnableCacheManager the real package imports its v1 engine, which it does not ship
    with pytest.raises(ModuleNotFoundError, match=r"^No module named 'llm_datadist_v1'$"):
        d.init({})
    assert sim.LLMDataDist.llm_engine_instance is None


def test_config_generates_documented_options():
    config = sim.LLMConfig()
    config.device_id = [0, 1]
    config.sync_kv_timeout = "500"
    config.listen_ip_info = "127.0.0.1:26000"
    config.local_comm_res = ""
    opts = config.generate_options()
    assert opts["ge.exec.deviceId"] == "0;1" and opts["ge.session_device_id"] == "0"
    assert opts["llm.SyncKvCacheWaitTime"] == "500"
    # local_comm_res implies the cache manager at init (_setup_engine_option), not in the options
    assert "llm.EnableCacheManager" not in opts
    assert opts["llm.LocalCommRes"] == "" and opts["llm.MemoryUtilization"] == "0.95"
    assert config.gen_options() is opts
    with pytest.raises(sim.LLMException, match=r"^sync_kv_timeout should be greater than zero\.$"):
        config.sync_kv_timeout = 0
    with pytest.raises(
        TypeError, match=r"^sync_kv_timeout only support \['int', 'str'\], but got <class 'float'>\.$"
    ):
        config.sync_kv_timeout = 1.5
    config.listen_ip_info = "nohost"  # checked at init, as upstream
    d = sim.LLMDataDist(sim.LLMRole.PROMPT, 1)
    config.enable_cache_manager = True
    with pytest.raises(
        sim.LLMException, match=r'^llm\.listenIpInfo "nohost" is invalid, format should be "ip:port"$'
    ):
        d.init(config.generate_options())


def test_init_with_a_taken_listen_port_fails(plane):
    port = free_port("127.0.0.1")
    holder = Listener("127.0.0.1", port, 99)
    try:
        with pytest.raises(
            sim.LLMException,
            match=rf"Failed to initialize llm datadist \(cannot listen on 127\.0\.0\.1:{port}",
        ) as e:
            make(listen_ip_info=f"127.0.0.1:{port}")
        assert e.value.status_code == S.LLM_FAILED
    finally:
        holder.close()


# -- value types --------------------------------------------------------------------------------
def test_cache_desc_checks():
    desc = sim.CacheDesc(2, [3, 10], sim.DataType.DT_FLOAT)
    assert (desc.size, desc.batch_size, desc.placement) == (120, 3, sim.Placement.DEVICE)
    with pytest.raises(TypeError, match=r"^num_tensors only support \['int'\], but got <class 'str'>\.$"):
        sim.CacheDesc("2", [3], sim.DataType.DT_FLOAT)
    with pytest.raises(ValueError, match=r"^num_tensors's value is out of range"):
        sim.CacheDesc(-1, [3], sim.DataType.DT_FLOAT)
    with pytest.raises(TypeError, match=r"^data_type only support \['DataType'\]"):
        sim.CacheDesc(1, [3], torch.float32)
    with pytest.raises(sim.LLMException, match=r"^batch_dim_index 2 out of range, \[0, 2\)$") as e:
        sim.CacheDesc(1, [3, 4], sim.DataType.DT_FLOAT, batch_dim_index=2)
    assert e.value.status_code == S.LLM_PARAM_INVALID


def test_keys_and_cluster_info():
    key = sim.CacheKey(cluster_id=1, req_id=2)
    assert (key.cluster_id, key.prompt_cluster_id, key.req_id, key.model_id, key.prefix_id) == (
        1,
        1,
        2,
        0,
        2**64 - 1,
    )
    with pytest.raises(ValueError, match=r"^req_id's value is out of range"):
        sim.CacheKey(1, -1)
    assert sim.BlocksCacheKey(prompt_cluster_id=3, model_id=1).cluster_id == 3
    assert sim.CacheKeyByIdAndIndex(1, 2, 3).batch_index == 3
    info = sim.LLMClusterInfo()
    info.remote_cluster_id = 5
    info.append_local_ip_info("1.2.3.4", 26000)
    assert info.local_ip_info_list == [(0x04030201, 26000)]
    with pytest.raises(ValueError, match=r"^port's value is out of range"):
        info.append_remote_ip_info("1.2.3.4", 70000)


def test_create_tensors_views_memory_without_copy():
    base = torch.arange(8, dtype=torch.float32)
    (view,) = sim.create_tensors([2, 4], torch.float32, [base.data_ptr()])
    view[1, 0] = -1
    assert base[4] == -1 and view.shape == (2, 4)


def test_cache_task_wait_semantics():
    gate = threading.Event()
    thread = threading.Thread(target=gate.wait, daemon=True)
    thread.start()
    task = sim.CacheTask(thread, lambda: [None, None])
    assert task.synchronize(10) == S.LLM_TIMEOUT
    assert task.get_results(10) == [S.LLM_TIMEOUT, S.LLM_TIMEOUT]
    gate.set()
    # configs that never finished are skipped: upstream (v2/llm_utils.py TransferAsyncThread.get)
    assert task.synchronize() == S.LLM_SUCCESS
    assert task.get_results() == [None, None]


def test_transfer_configs_check_ranges():
    with pytest.raises(
        sim.LLMException, match=r"^src_layer_range size should be equal to dst_layer_range size$"
    ):
        sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1), range(0, 2), range(0, 1))
    with pytest.raises(sim.LLMException, match=r"^check src_layer_range\.step == 1 failed$"):
        sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1), range(0, 4, 2), range(0, 2))
    with pytest.raises(sim.LLMException, match=r"src_batch_index should be 0"):
        sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1), range(0, 1), range(0, 1), src_batch_index=1)


# -- caches ---------------------------------------------------------------------------------------
def test_cache_ids_start_at_one(dd):
    _, first = blocks_cache(dd)
    _, second = blocks_cache(dd)
    assert (first.cache_id, second.cache_id) == (1, 2)
    assert first.is_blocks_cache and len(first.tensor_addrs) == 2
    dd.cache_manager.unregister_cache(first.cache_id)
    assert len(first.tensor_addrs) == 2  # unregister_cache takes an id: the Cache object is untouched
    dd.cache_manager.unregister_cache(first.cache_id)  # an unknown id is SUCCESS upstream


def test_register_checks(dd):
    cm = dd.cache_manager
    desc = sim.CacheDesc(2, [3, 10], sim.DataType.DT_FLOAT)
    t = to_device(torch.zeros(3, 10))
    with pytest.raises(sim.LLMException, match=r"^addrs length should be equal to num_tensors\.$"):
        cm.register_cache(desc, [t.data_ptr()])
    with pytest.raises(TypeError, match=r"^addrs only support \['list'\], but got <class 'int'>\.$"):
        cm.register_cache(desc, t.data_ptr())
    with pytest.raises(sim.LLMException, match=r"^addr can not be zero\.$"):
        cm.register_cache(desc, [t.data_ptr(), 0])
    with pytest.raises(
        sim.LLMException,
        match=r"^\[register_blocks_cache\] failed, error code is LLMStatusCode\.LLM_PARAM_INVALID, ",
    ) as e:
        blocks_cache(dd, key=sim.BlocksCacheKey(1, 0))
        blocks_cache(dd, key=sim.BlocksCacheKey(1, 0))
    # the sim's own explanation rides along as the cause
    assert "blocks cache key BlocksCacheKey(cluster_id=1, model_id=0) already exists" in str(
        e.value.__cause__
    )


def test_no_remote_accessible_registration_after_link(dd):
    dd.link("c", {1: 0, 2: 1}, RANK_TABLE)
    with pytest.raises(
        sim.LLMException, match=r"^you can not register remote accessible cache after link\.$"
    ):
        blocks_cache(dd, remote_accessible=True)
    blocks_cache(dd)  # the default becomes False after link


def test_pool_allocate_deallocate_and_keys(plane):
    d = make(mem_pool_cfg='{"memory_size": 65536}')
    try:
        cm = d.cache_manager
        pool = d._pools["DEVICE"]
        desc = sim.CacheDesc(2, [2, 1024], sim.DataType.DT_FLOAT)
        key = sim.CacheKey(1, 5)
        cache = cm.allocate_cache(desc, [key, sim.CacheKey(1, 2**64 - 1)])
        assert cache.cache_id == 1 and not cache.is_blocks_cache
        views = sim.create_tensors([2, 1024], torch.float32, cache.tensor_addrs)
        views[0].fill_(3)
        assert pool.bytes_in_use == 2 * 8192
        with pytest.raises(
            sim.LLMException,
            match=r"^\[allocate_cache\] failed, error code is LLMStatusCode\.LLM_OUT_OF_MEMORY, ",
        ) as e:
            cm.allocate_cache(sim.CacheDesc(8, [2, 1024], sim.DataType.DT_FLOAT))
        assert e.value.status_code == S.LLM_OUT_OF_MEMORY
        cm.deallocate_cache(cache)
        assert pool.bytes_in_use == 2 * 8192, "memory stays while a key is live"
        cm.remove_cache_key(key)
        assert pool.bytes_in_use == 0
        cm.remove_cache_key(key)  # nothing left to remove
    finally:
        d.finalize()


def test_every_pool_chunk_starts_as_poison_even_where_a_freed_cache_was(plane):
    """The real pool's memory is uninitialised: a pool cache never filled must not read as zeros,
    nor as the bytes a freed cache left in the same chunk (they could pass for a transfer's)."""
    from kvtest.backends.sim.pool import POISON

    d = make(mem_pool_cfg='{"memory_size": 65536}')
    try:
        cm = d.cache_manager
        desc = sim.CacheDesc(1, [4, 1000], sim.DataType.DT_INT8)
        first = cm.allocate_cache(desc)
        addrs = list(first.tensor_addrs)
        view = sim.create_tensors([4, 1000], torch.int8, addrs)[0]
        assert bytes(view.numpy().tobytes()) == POISON * 1000
        view.fill_(7)
        cm.deallocate_cache(first)
        again = cm.allocate_cache(desc)
        assert again.tensor_addrs == addrs  # first fit: the same chunk
        view = sim.create_tensors([4, 1000], torch.int8, again.tensor_addrs)[0]
        assert bytes(view.numpy().tobytes()) == POISON * 1000
    finally:
        d.finalize()


def test_allocate_needs_a_pool(dd):
    with pytest.raises(sim.LLMException, match=r"^you should config memory pool firstly"):
        dd.cache_manager.allocate_cache(sim.CacheDesc(1, [2], sim.DataType.DT_FLOAT))


def test_swap_blocks_and_copy_cache(dd):
    cm = dd.cache_manager
    tensors, dev = blocks_cache(dd)
    tensors[0].copy_(torch.arange(32.0).reshape(4, 8))
    host = [torch.zeros(4, 8) for _ in range(2)]
    cpu = sim.Cache.create_cpu_cache(
        sim.CacheDesc(2, [4, 8], sim.DataType.DT_FLOAT, sim.Placement.HOST), [t.data_ptr() for t in host]
    )
    assert cpu.cache_id == -1 and cpu.is_blocks_cache
    cm.swap_blocks(dev, cpu, {3: 0})
    assert torch.equal(host[0][0], tensors[0][3])
    with pytest.raises(
        sim.LLMException,
        match=r"^swap src placement:Placement\.HOST to dst placement:Placement\.HOST is not support$",
    ):
        cm.swap_blocks(cpu, cpu, {0: 1})
    with pytest.raises(sim.LLMException, match=r"^src_block_index:4 must be in \[0, 4\)$"):
        cm.swap_blocks(dev, cpu, {4: 0})
    with pytest.raises(sim.LLMException, match=r"^cache_desc num_tensors:2 not equal addrs num:1$"):
        sim.Cache.create_cpu_cache(sim.CacheDesc(2, [4, 8], sim.DataType.DT_FLOAT, sim.Placement.HOST), [1])
    src = [to_device(torch.arange(8.0).reshape(2, 4)) for _ in range(2)]
    dst = [to_device(torch.zeros(2, 4)) for _ in range(2)]
    desc = sim.CacheDesc(2, [2, 4], sim.DataType.DT_FLOAT)
    a = cm.register_cache(desc, [t.data_ptr() for t in src])
    b = cm.register_cache(desc, [t.data_ptr() for t in dst])
    cm.copy_cache(b, a, dst_batch_index=0, src_batch_index=1, offset=4, size=8)
    assert dst[0][0].tolist() == [0.0, 5.0, 6.0, 0.0] and dst[1][0].tolist() == [0.0, 5.0, 6.0, 0.0]


# -- transfer preconditions ---------------------------------------------------------------------
def test_pull_blocks_preconditions(dd):
    cm = dd.cache_manager
    _, blocks = blocks_cache(dd)
    keep = to_device(torch.zeros(2))
    plain = cm.register_cache(sim.CacheDesc(1, [2], sim.DataType.DT_FLOAT), [keep.data_ptr()])
    with pytest.raises(sim.LLMException, match=r"^dst_blocks can not be empty\.$") as e:
        cm.pull_blocks(sim.BlocksCacheKey(2), blocks, [0], [])
    assert e.value.status_code == S.LLM_PARAM_INVALID
    with pytest.raises(sim.LLMException, match=r"^param check failed, dst_cache should be blocks cache\.$"):
        cm.pull_blocks(sim.BlocksCacheKey(2), plain, [0], [0])
    with pytest.raises(
        sim.LLMException,
        match=r"^src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey\.$",
    ):
        cm.pull_blocks(sim.CacheKey(2, 0), blocks, [0], [0])
    with pytest.raises(
        TypeError, match=r"^src_blocks only support \['list', 'tuple'\], but got <class 'int'>\.$"
    ):
        cm.pull_blocks(sim.BlocksCacheKey(2), blocks, 0, [0])
    with pytest.raises(
        sim.LLMException,
        match=r"^\[pull_blocks\] failed, error code is LLMStatusCode\.LLM_NOT_YET_LINK, src_cache_key = BlocksCacheKey\(cluster_id=2, model_id=0\)\.$",
    ) as e:
        cm.pull_blocks(sim.BlocksCacheKey(2), blocks, [0], [0])
    assert e.value.status_code == S.LLM_NOT_YET_LINK
    with pytest.raises(sim.LLMException, match=r"^param check failed, cache can not be blocks cache\.$"):
        cm.pull_cache(sim.CacheKey(2, 0), blocks)


def test_push_needs_remote_cache_accessible(dd):
    cm = dd.cache_manager
    _, blocks = blocks_cache(dd)
    with pytest.raises(
        sim.LLMException,
        match=r"^push_blocks is only supported while enable_remote_cache_accessible is True$",
    ):
        cm.push_blocks(sim.BlocksCacheKey(2), blocks, [0], [0])
    with pytest.raises(
        sim.LLMException, match=r"^push_cache is only supported while enable_remote_cache_accessible is True$"
    ):
        cm.push_cache(sim.CacheKeyByIdAndIndex(2, 1), blocks)


def test_transfer_cache_async_preconditions(plane):
    d = make(enable_remote_cache_accessible=True)
    try:
        cm = d.cache_manager
        tensors = [to_device(torch.zeros(2, 4)) for _ in range(3)]
        odd = cm.register_blocks_cache(
            sim.CacheDesc(3, [2, 4], sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors]
        )
        cfg = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(2), range(0, 1), range(0, 1))

        class Always(sim.LayerSynchronizer):
            def synchronize_layer(self, layer_index, timeout_in_millis):
                return True

        with pytest.raises(sim.LLMException, match=r"^cache_desc\.num_tensors \(3\) is not even$"):
            cm.transfer_cache_async(odd, Always(), [cfg])
        _, even = blocks_cache(d)
        with pytest.raises(
            TypeError,
            # the real check_isinstance drops its extra_fmt prefix for an item of the wrong type
            match=r"^transfer_configs inner type only support \[<class '[\w.]+\.TransferWithCacheKeyConfig'>\]",
        ):
            cm.transfer_cache_async(even, Always(), [sim.TransferConfig(2, [1, 2])])
        with pytest.raises(TypeError, match=r"^layer_synchronizer only support \['LayerSynchronizer'\]"):
            cm.transfer_cache_async(even, object(), [cfg])
        # not linked: the per-layer native call fails, so it is a result code, not an exception
        task = cm.transfer_cache_async(even, Always(), [cfg])
        assert task.get_results(5000) == [S.LLM_NOT_YET_LINK]
        assert task.synchronize(5000) == S.LLM_NOT_YET_LINK
    finally:
        d.finalize()


# -- links and transfers against a fake peer ----------------------------------------------------
def test_two_sided_link_validation(dd):
    with pytest.raises(sim.LLMException, match=r"^comm_name can not be empty$"):
        dd.link("", {1: 0, 2: 1}, RANK_TABLE)
    with pytest.raises(sim.LLMException, match=r"^comm_name length should be smaller than 128\.$"):
        dd.link("c" * 128, {1: 0, 2: 1}, RANK_TABLE)
    with pytest.raises(sim.LLMException, match=r"^cluster_rank_info size can not be greater than 4\.$"):
        dd.link("c", {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}, RANK_TABLE)
    with pytest.raises(sim.LLMException, match=r"^cluster num must be bigger than 1\.$"):
        dd.link("c", {1: 0}, RANK_TABLE)
    with pytest.raises(
        sim.LLMException,
        match=r"^\[link\] failed, error code is LLMStatusCode\.LLM_PARAM_INVALID, cluster_rank_info = \{1: 0, 2: 1\}\.$",
    ):
        dd.link("c", {1: 0, 2: 1}, "not json")
    with pytest.raises(sim.LLMException, match=r"^rank in cluster_rank_info must be ordered$"):
        dd.link("c", {1: 1, 2: 0}, RANK_TABLE)
    with pytest.raises(
        TypeError, match=r"^cluster_rank_info only support \['dict'\], but got <class 'list'>\.$"
    ):
        dd.link("c", [1, 2], RANK_TABLE)
    with pytest.raises(
        sim.LLMException,
        match=r"^\[query_register_mem_status\] failed, error code is LLMStatusCode\.LLM_NOT_YET_LINK, comm_id = 7\.$",
    ):
        dd.query_register_mem_status(7)


def test_two_sided_link_fails_when_the_peer_never_comes(plane):
    d = make(link_total_time=200)
    try:
        began = time.monotonic()
        comm = d.link("c", {1: 0, 2: 1}, RANK_TABLE)
        assert d.query_register_mem_status(comm) == sim.RegisterMemStatus.PREPARING
        while (status := d.query_register_mem_status(comm)) == sim.RegisterMemStatus.PREPARING:
            assert time.monotonic() - began < 30, "still PREPARING 30 s after a 200 ms LinkTotalTime"
            time.sleep(0.01)
        assert status == sim.RegisterMemStatus.FAILED
        assert time.monotonic() - began >= 0.2, "FAILED before LinkTotalTime ran out"
    finally:
        d.finalize()


def test_pull_through_nixl_from_a_fake_peer(dd, fake_peer):
    src = [torch.arange(32.0).reshape(4, 8) + 100 * i for i in range(2)]
    fake_peer.export_blocks(src)
    comm = linked(dd, fake_peer)
    tensors, cache = blocks_cache(dd, remote_accessible=False)
    dd.cache_manager.pull_blocks(sim.BlocksCacheKey(9), cache, [3, 0], [0, 1])
    for i in range(2):
        assert torch.equal(tensors[i][0], src[i][3]) and torch.equal(tensors[i][1], src[i][0])
        assert torch.equal(tensors[i][2:], torch.zeros(2, 8))
    with pytest.raises(
        sim.LLMException,
        match=r"^\[pull_blocks\] failed, error code is LLMStatusCode\.LLM_PARAM_INVALID, src_cache_key = BlocksCacheKey\(cluster_id=9, model_id=0\)\.$",
    ):
        dd.cache_manager.pull_blocks(sim.BlocksCacheKey(9), cache, [4], [0])
    with pytest.raises(
        sim.LLMException,
        match=r"^\[pull_blocks\] failed, error code is LLMStatusCode\.LLM_KV_CACHE_NOT_EXIST, src_cache_key = BlocksCacheKey\(cluster_id=9, model_id=3\)\.$",
    ) as e:
        dd.cache_manager.pull_blocks(sim.BlocksCacheKey(9, 3), cache, [0], [0])
    assert e.value.status_code == S.LLM_KV_CACHE_NOT_EXIST
    with pytest.raises(
        sim.LLMException,
        match=r"^\[pull_cache\] failed, error code is LLMStatusCode\.LLM_KV_CACHE_NOT_EXIST, ",
    ):
        plain = dd.cache_manager.register_cache(
            sim.CacheDesc(1, [4, 8], sim.DataType.DT_FLOAT), [torch.zeros(4, 8).data_ptr()]
        )
        dd.cache_manager.pull_cache(sim.CacheKey(9, 1), plain)
    dd.unlink(comm)
    with pytest.raises(sim.LLMException, match=r"LLM_NOT_YET_LINK"):
        dd.cache_manager.pull_blocks(sim.BlocksCacheKey(9), cache, [0], [0])


def test_switch_role_refused_while_linked(dd, fake_peer):
    comm = linked(dd, fake_peer)
    with pytest.raises(
        sim.LLMException,
        match=r"^\[switch_role\] failed, error code is LLMStatusCode\.LLM_EXIST_LINK, "
        r"Failed to switch role, role = LLMRole\.DECODER, options = \{\}\.$",
    ) as e:
        dd.switch_role(sim.LLMRole.DECODER)
    assert e.value.status_code == S.LLM_EXIST_LINK
    assert "links to clusters [9] still exist" in str(e.value.__cause__)
    dd.unlink(comm)
    dd.switch_role(sim.LLMRole.DECODER)


def test_switch_role_opens_and_closes_the_listen_port(dd):
    port = free_port("127.0.0.1")
    dd.switch_role(sim.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"})
    assert port_open(port)
    dd.switch_role(sim.LLMRole.DECODER)
    assert not port_open(port)
    with pytest.raises(TypeError, match=r"^switch_options only support \['dict'\], but got <class 'str'>\.$"):
        dd.switch_role(sim.LLMRole.PROMPT, "x")


def test_link_clusters_reports_codes_instead_of_raising(dd):
    closed = free_port("127.0.0.1")
    info = sim.LLMClusterInfo()
    info.remote_cluster_id = 5
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", closed)
    began = time.monotonic()
    assert dd.link_clusters([info], 2000) == (S.LLM_LINK_FAILED, [S.LLM_LINK_FAILED])
    assert time.monotonic() - began < 2.5
    other = free_port("127.0.0.1")
    impostor = Listener("127.0.0.1", other, 77)  # answers with cluster id 77, not 5
    try:
        info2 = sim.LLMClusterInfo()
        info2.remote_cluster_id = 5
        info2.append_local_ip_info("127.0.0.1", 0)
        info2.append_remote_ip_info("127.0.0.1", other)
        assert dd.link_clusters([info2], 2000) == (S.LLM_LINK_FAILED, [S.LLM_LINK_FAILED])
    finally:
        impostor.close()
    bare = sim.LLMClusterInfo()
    bare.remote_cluster_id = 5
    with pytest.raises(sim.LLMException, match=r"^local_ip_info_list is empty"):
        dd.link_clusters([bare])
    with pytest.raises(sim.LLMException, match=r"^Param timeout should be greater than 0\.$"):
        dd.link_clusters([info], 0)
    with pytest.raises(
        TypeError,
        match=r"^clusters inner type only support \[<class '[\w.]+\.LLMClusterInfo'>\], but got <class 'int'>\.$",
    ):
        dd.link_clusters([5])


def test_one_sided_link_to_a_listening_fake_peer(dd, fake_peer):
    port = free_port("127.0.0.1")
    server = Listener("127.0.0.1", port, 9)
    try:
        info = sim.LLMClusterInfo()
        info.remote_cluster_id = 9
        info.append_local_ip_info("127.0.0.1", 0)
        info.append_remote_ip_info("127.0.0.1", port)
        assert dd.link_clusters([info], 2000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert dd.link_clusters([info], 2000) == (S.LLM_ALREADY_LINK, [S.LLM_ALREADY_LINK])
        assert fake_peer.plane.fetch(fake_peer.plane.key("links", 9)) == {"1": ["server"]}
        assert dd.unlink_clusters([info]) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        assert fake_peer.plane.fetch(fake_peer.plane.key("links", 9)) == {}
    finally:
        server.close()
