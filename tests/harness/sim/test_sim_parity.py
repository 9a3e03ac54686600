"""Behaviours the sim takes from the real llm_datadist (hicann/hixl 9ed283b) that the upstream unit tests
and the differential suite found different; each test says what the sim did before."""

from __future__ import annotations

import ctypes
import json

import pytest

from kvtest.backends import sim
from kvtest.backends.sim import context, control
from kvtest.node import free_port

S = sim.LLMStatusCode
LOCAL_COMM_RES = json.dumps({"version": "1.0", "server_count": "1", "server_list": []})


@pytest.fixture
def plane(configured) -> control.ControlPlane:
    current = context.current()
    assert current is not None
    return current.plane


def make(cluster_id: int = 1, **options: object) -> sim.LLMDataDist:
    config = sim.LLMConfig()
    config.enable_cache_manager = True
    config.mem_pool_cfg = '{"memory_size": 1048576}'
    for name, value in options.items():
        setattr(config, name, value)
    dd = sim.LLMDataDist(sim.LLMRole.PROMPT, cluster_id)
    dd.init(config.generate_options())
    return dd


def test_checks_raise_the_real_types_and_words():
    # before: ValueError("mem_utilization's value is out of range, (0, 1], ...") and 0.0 refused
    config = sim.LLMConfig()
    config.mem_utilization = 0.0
    with pytest.raises(
        sim.LLMException, match=r"^mem_utilization must be in range \[0,1\], current:1\.5$"
    ) as e:
        config.mem_utilization = 1.5
    assert e.value.status_code == S.LLM_PARAM_INVALID
    # before: "req_id only support [int], but got str" (utils.py words it with a list of names and the class)
    with pytest.raises(TypeError, match=r"^req_id only support \['int'\], but got <class 'str'>\.$"):
        sim.CacheKey(1, "a")
    with pytest.raises(sim.LLMException, match=r"^Param num is over limit$"):
        sim.CacheKey(1, 2, 3, 4, 5)
    # before: a LLMException's second positional argument was its status code
    exc = sim.LLMException("a", "b")
    assert str(exc) == "('a', 'b')" and exc.status_code == S.LLM_SUCCESS


def test_defaults_and_read_only_fields_are_the_real_ones():
    # before: remote_cluster_id 0, link_retry_count None, enable_cache_manager None, batch_dim_index writable
    info = sim.LLMClusterInfo()
    assert (info.remote_cluster_id, info.remote_role_type) == (None, None)
    config = sim.LLMConfig()
    assert (config.link_retry_count, config.link_total_time, config.enable_cache_manager) == (1, 0, False)
    config.rdma_traffic_class = 100
    assert config.generate_options()["llm.RdmaTrafficClass"] == "100"
    desc = sim.CacheDesc(1, [2, 4], sim.DataType.DT_INT8)
    assert desc.batch_dim == 0
    with pytest.raises(AttributeError):
        desc.num_tensors = 2  # type: ignore[misc]
    assert str(sim.LLMRole.PROMPT) == "LLMRole.PROMPT" and str(sim.Placement.HOST) == "Placement.HOST"


def test_unknown_comm_id_is_not_yet_link(plane):
    # before: LLM_PARAM_INVALID "comm_id 7 does not exist" (comm_link_manager.cc Unlink/QueryRegisterMemStatus)
    dd = make()
    try:
        for call in (dd.unlink, dd.query_register_mem_status):
            with pytest.raises(sim.LLMException, match=r", comm_id = 7\.$") as e:
                call(7)
            assert e.value.status_code == S.LLM_NOT_YET_LINK
    finally:
        dd.finalize()


def test_arguments_are_checked_before_the_engine(plane):
    # before: an unlinked pull with a bad argument said LLM_NOT_YET_LINK
    dd = make()
    try:
        cm = dd.cache_manager
        blocks = cm.allocate_blocks_cache(sim.CacheDesc(2, [4, 8], sim.DataType.DT_INT8))
        with pytest.raises(sim.LLMException, match=r"^dst_blocks can not be empty\.$"):
            cm.pull_blocks(sim.BlocksCacheKey(2), blocks, [0], [])
        with pytest.raises(sim.LLMException, match="LLM_NOT_YET_LINK"):
            cm.pull_blocks(sim.BlocksCacheKey(2), blocks, [0], [0])
    finally:
        dd.finalize()


def test_deallocate_of_a_foreign_cache_is_success_and_ids_are_used_up_by_failures(plane):
    # before: LLM_PARAM_INVALID for an unknown, registered or freed cache (cache_manager.cc)
    dd = make()
    try:
        cm = dd.cache_manager
        desc = sim.CacheDesc(2, [2, 8], sim.DataType.DT_INT8)
        with pytest.raises(sim.LLMException, match="LLM_OUT_OF_MEMORY"):
            cm.allocate_cache(sim.CacheDesc(1, [4096, 4096], sim.DataType.DT_INT8))
        cache = cm.allocate_cache(desc)
        assert cache.cache_id == 2  # the failed allocation used up id 1, as the engine numbers first
        cm.deallocate_cache(cache)
        cm.deallocate_cache(cache)
        host = (ctypes.c_uint8 * 16)()
        registered = cm.register_cache(desc, [ctypes.addressof(host), ctypes.addressof(host) + 8], [], False)
        cm.deallocate_cache(registered)
        assert registered.tensor_addrs == []
    finally:
        dd.finalize()


def test_link_to_oneself_pushes_but_refuses_pulls(plane):
    # before: a link to one's own cluster was LLM_LINK_FAILED; the engine links and refuses pulls
    # from its own cluster (llm_datadist_v2.cc PullCache)
    port = free_port("127.0.0.1")
    dd = make(
        enable_remote_cache_accessible=True, listen_ip_info=f"127.0.0.1:{port}", local_comm_res=LOCAL_COMM_RES
    )
    try:
        cm = dd.cache_manager
        desc = sim.CacheDesc(2, [4, 8], sim.DataType.DT_INT8)
        src = cm.allocate_blocks_cache(desc, sim.BlocksCacheKey(1, 0))
        dst = cm.allocate_blocks_cache(desc, sim.BlocksCacheKey(1, 1))
        info = sim.LLMClusterInfo()
        info.remote_cluster_id = 1
        info.append_remote_ip_info("127.0.0.1", port)
        assert dd.link_clusters([info], 5000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
        ctypes.memset(src.tensor_addrs[0], 7, 8)
        cm.push_blocks(sim.BlocksCacheKey(1, 1), src, [0], [2])
        assert ctypes.string_at(dst.tensor_addrs[0] + 16, 8) == b"\x07" * 8
        with pytest.raises(sim.LLMException, match="LLM_PARAM_INVALID") as e:
            cm.pull_blocks(sim.BlocksCacheKey(1, 0), dst, [0], [1])
        assert "data can not be pulled from own cluster:1" in str(e.value.__cause__)
        assert dd.unlink_clusters([info], 5000) == (S.LLM_SUCCESS, [S.LLM_SUCCESS])
    finally:
        dd.finalize()
