"""The call sequences of the differential suite (``benchmarks/differential.py``), run in one process
against whichever ``llm_datadist`` is first on the import path: kvtest's shims (the sim) or the real
package built by ``kvtest upstream build``. Prints one JSON object per call:
``{"call": label, "outcome": ...}`` where the outcome is the normalized return value, or the exception's
type, status code and message. Nothing here knows which backend it runs on; the only adapter is
``device_bytes`` (``tensor.npu()`` where a torch.npu exists, the sim's; the real package's unit-test
build treats host memory as device memory).

Usage: python benchmarks/differential_calls.py [--phase single|server|client] [--port N]
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import llm_datadist as ld
import torch
from llm_datadist import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    DataType,
    KvCache,
    LayerSynchronizer,
    LLMClusterInfo,
    LlmConfig,
    LLMDataDist,
    LLMException,
    LLMRole,
    LLMStatusCode,
    MemInfo,
    Memtype,
    Placement,
    RegisterMemStatus,
    Status,
    TransferConfig,
    TransferWithCacheKeyConfig,
)

U64 = 2**64 - 1
LOCAL_COMM_RES = json.dumps(
    {
        "server_count": "1",
        "server_list": [{"device": [{"device_id": "0", "device_ip": "1.1.1.1"}], "server_id": "127.0.0.1"}],
        "status": "completed",
        "version": "1.0",
    }
)
_keep: list[Any] = []  # memory handed to the package stays alive for the whole run


def normalize(value: Any) -> Any:
    """A JSON-able, address-free picture of a return value."""
    if isinstance(value, enum.Enum):
        return f"{type(value).__name__}.{value.name}"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, Cache):
        return {"Cache": value.cache_id, "blocks": value.is_blocks_cache, "addrs": len(value.tensor_addrs)}
    if isinstance(value, range):
        return repr(value)
    return f"<{type(value).__name__}>"


def outcome_of(fn: Callable[[], Any]) -> tuple[Any, Any]:
    try:
        value = fn()
    except BaseException as exc:  # noqa: BLE001 - every outcome is recorded, whatever it is
        code = getattr(exc, "status_code", None)
        return {
            "raises": type(exc).__name__,
            "status_code": str(code) if code is not None else None,
            "message": str(exc),
        }, None
    return {"returns": normalize(value)}, value


def call(label: str, fn: Callable[[], Any]) -> Any:
    outcome, value = outcome_of(fn)
    print(json.dumps({"call": label, "outcome": outcome}), flush=True)
    return value


def device_bytes(nbytes: int) -> int:
    """The address of ``nbytes`` of device memory (kept alive)."""
    tensor = torch.zeros(nbytes, dtype=torch.int8)
    try:
        tensor = tensor.npu()
    except (AttributeError, RuntimeError):
        pass
    _keep.append(tensor)
    return int(tensor.data_ptr())


def host_bytes(nbytes: int) -> int:
    tensor = torch.zeros(nbytes, dtype=torch.int8)
    _keep.append(tensor)
    return int(tensor.data_ptr())


class Always(LayerSynchronizer):
    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        return True


class Never(LayerSynchronizer):
    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        return False


def set_attr(obj: Any, name: str, value: Any) -> Callable[[], Any]:
    def run() -> Any:
        setattr(obj, name, value)
        return getattr(obj, name)

    return run


# -- the module and its value types ------------------------------------------------------------
def surface() -> None:
    for name in ld.__all__:
        call(f"llm_datadist.{name}", lambda name=name: type(getattr(ld, name)).__name__)
    call("llm_datadist.v2_list", lambda: list(ld.v2_list))
    call("llm_datadist.NoSuchName", lambda: ld.NoSuchName)  # type: ignore[attr-defined]
    call("import llm_datadist.utils.utils", lambda: __import__("llm_datadist.utils.utils").__name__)
    for enum_type in (LLMStatusCode, DataType, LLMRole, Placement, Memtype, RegisterMemStatus):
        call(f"{enum_type.__name__} members", lambda e=enum_type: [m.name for m in e])
        for member in enum_type:
            call(f"{enum_type.__name__}.{member.name} value", lambda m=member: int(m.value))
            call(f"str({enum_type.__name__}.{member.name})", lambda m=member: str(m))
    call("LLMException(msg)", lambda: (str(LLMException("m")), str(LLMException("m").status_code)))
    call(
        "LLMException(msg, status_code=)",
        lambda: str(LLMException("m", status_code=LLMStatusCode.LLM_TIMEOUT).status_code),
    )
    call("LLMException(a, b)", lambda: str(LLMException("a", "b")))
    call("LLMException is RuntimeError", lambda: issubclass(LLMException, RuntimeError))
    call("Status(SUCCESS).is_ok", lambda: Status(LLMStatusCode.LLM_SUCCESS).is_ok())
    call("Status(FAILED).is_ok", lambda: Status(LLMStatusCode.LLM_FAILED).is_ok())
    call("Status.status_code", lambda: Status(LLMStatusCode.LLM_TIMEOUT).status_code)


def configs() -> None:
    for name in (
        "device_id",
        "listen_ip_info",
        "sync_kv_timeout",
        "deploy_res_path",
        "ge_options",
        "enable_switch_role",
        "link_total_time",
        "link_retry_count",
        "cluster_info",
        "output_max_size",
        "mem_utilization",
        "buf_pool_cfg",
        "mem_pool_cfg",
        "host_mem_pool_cfg",
        "enable_cache_manager",
        "enable_remote_cache_accessible",
        "rdma_traffic_class",
        "rdma_service_level",
        "local_comm_res",
        "transfer_backend",
        "global_resource_config",
        "options",
    ):
        call(f"LlmConfig().{name} default", lambda name=name: getattr(LlmConfig(), name))
    call("LlmConfig().generate_options() default", lambda: LlmConfig().generate_options())
    good = {
        "device_id": [0, [0, 1], (2, 3)],
        "listen_ip_info": ["127.0.0.1:26000", "nohost"],
        "sync_kv_timeout": [1000, "1000"],
        "deploy_res_path": ["/tmp/x"],
        "ge_options": [{"ge.a": "1"}],
        "enable_switch_role": [True],
        "link_total_time": [0, 2**32 - 1],
        "link_retry_count": [1, 100],
        "cluster_info": ['{"listen_ip_info": [{"ip": "1.2.3.4", "port": 1}]}'],
        "output_max_size": [10],
        "mem_utilization": [0.0, 1.0, 0.5],
        "buf_pool_cfg": ["{}"],
        "mem_pool_cfg": ['{"memory_size": 1024}'],
        "host_mem_pool_cfg": ['{"memory_size": 1024}'],
        "enable_cache_manager": [True, False],
        "enable_remote_cache_accessible": [True],
        "rdma_traffic_class": [100],
        "rdma_service_level": [0],
        "local_comm_res": [""],
        "transfer_backend": ["hixl"],
        "global_resource_config": ["{}"],
    }
    bad = {
        "device_id": [-1, "0", [0, -1], [0, "1"], 2**31, 1.0],
        "listen_ip_info": [1],
        "sync_kv_timeout": [0, "x", "0", 1.5, 2**31],
        "deploy_res_path": [1],
        "ge_options": [[("a", "b")], {"a": 1}, {1: "a"}],
        "enable_switch_role": [1],
        "link_total_time": [-1, 2**32, "1"],
        "link_retry_count": [0, 101, 1.0],
        "cluster_info": [1, "not json", '{"listen_ip_info": [{"ip": "999.1.1.1", "port": 1}]}'],
        "output_max_size": ["1"],
        "mem_utilization": [1.5, -0.1, 1],
        "buf_pool_cfg": [1],
        "mem_pool_cfg": [1],
        "host_mem_pool_cfg": [None, 1],
        "enable_cache_manager": [1, None],
        "enable_remote_cache_accessible": ["yes"],
        "rdma_traffic_class": [-1, 2**32, "1"],
        "rdma_service_level": [None],
        "local_comm_res": [1],
        "transfer_backend": [1],
        "global_resource_config": [123, {"k": "v"}],
    }
    for name, values in {**good}.items():
        for v in values:
            call(f"LlmConfig.{name} = {v!r}", set_attr(LlmConfig(), name, v))
    for name, values in bad.items():
        for v in values:
            call(f"LlmConfig.{name} = {v!r} (bad)", set_attr(LlmConfig(), name, v))
    full = LlmConfig()
    for name, values in good.items():
        if name != "cluster_info":
            setattr(full, name, values[0])
    call("LlmConfig(every property).generate_options()", full.generate_options)
    over = LlmConfig()
    over.ge_options = {"llm.SyncKvCacheWaitTime": "5", "ge.exec.deviceId": "9", "x": "y"}
    over.sync_kv_timeout = 7
    over.device_id = 1
    call("ge_options vs properties: precedence", over.generate_options)
    call(
        "generate_options twice is the same dict", lambda: over.generate_options() is over.generate_options()
    )


def cluster_info() -> None:
    call(
        "LLMClusterInfo() defaults",
        lambda: [
            LLMClusterInfo().remote_cluster_id,
            LLMClusterInfo().remote_role_type,
            LLMClusterInfo().local_ip_info_list,
            LLMClusterInfo().remote_ip_info_list,
        ],
    )
    for v in (5, 0, U64, -1, U64 + 1, "1", None):
        call(f"LLMClusterInfo.remote_cluster_id = {v!r}", set_attr(LLMClusterInfo(), "remote_cluster_id", v))
    for v in (LLMRole.PROMPT, 2, "p", None):
        call(f"LLMClusterInfo.remote_role_type = {v!r}", set_attr(LLMClusterInfo(), "remote_role_type", v))
    for ip, port in (
        ("1.2.3.4", 26000),
        (16909060, 1),
        ("1.2.3.4", 70000),
        ("1.2.3.4", -1),
        ("bad ip", 1),
        (1.5, 1),
        ("1.2.3.4", "1"),
        (None, 1),
    ):

        def add(ip: Any = ip, port: Any = port) -> Any:
            info = LLMClusterInfo()
            info.append_local_ip_info(ip, port)
            info.append_remote_ip_info(ip, port)
            return [info.local_ip_info_list, info.remote_ip_info_list]

        call(f"LLMClusterInfo.append_*_ip_info({ip!r}, {port!r})", add)


def descs_and_keys() -> None:
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("CacheDesc(2, [3, 10], FLOAT)", lambda: CacheDesc(2, [3, 10], DataType.DT_FLOAT)),
        ("CacheDesc(num_tensors=-1)", lambda: CacheDesc(-1, [2, 4], DataType.DT_INT8)),
        ("CacheDesc(num_tensors='2')", lambda: CacheDesc("2", [2, 4], DataType.DT_INT8)),
        ("CacheDesc(num_tensors=0)", lambda: CacheDesc(0, [2, 4], DataType.DT_INT8)),
        ("CacheDesc(shape=(2, 4))", lambda: CacheDesc(1, (2, 4), DataType.DT_INT8)),
        ("CacheDesc(shape=5)", lambda: CacheDesc(1, 5, DataType.DT_INT8)),
        ("CacheDesc(shape=[2, 'a'])", lambda: CacheDesc(1, [2, "a"], DataType.DT_INT8)),
        ("CacheDesc(shape=[])", lambda: CacheDesc(1, [], DataType.DT_INT8)),
        ("CacheDesc(shape=[-1, 4])", lambda: CacheDesc(1, [-1, 4], DataType.DT_INT8)),
        ("CacheDesc(shape=[2**63, 4])", lambda: CacheDesc(1, [2**63, 4], DataType.DT_INT8)),
        ("CacheDesc(data_type=torch)", lambda: CacheDesc(1, [2], torch.float32)),
        ("CacheDesc(placement=1)", lambda: CacheDesc(1, [2], DataType.DT_INT8, 1)),
        ("CacheDesc(batch_dim_index=1)", lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, batch_dim_index=1)),
        ("CacheDesc(batch_dim_index=2)", lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, batch_dim_index=2)),
        ("CacheDesc(batch_dim_index=-1)", lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, batch_dim_index=-1)),
        (
            "CacheDesc(seq_len_dim_index=1)",
            lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, seq_len_dim_index=1),
        ),
        (
            "CacheDesc(seq_len_dim_index=5)",
            lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, seq_len_dim_index=5),
        ),
        (
            "CacheDesc(seq_len_dim_index=2**64-1)",
            lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, seq_len_dim_index=U64),
        ),
        ("CacheDesc(kv_tensor_format=1)", lambda: CacheDesc(1, [2, 4], DataType.DT_INT8, kv_tensor_format=1)),
        ("CacheKey(1, 2)", lambda: CacheKey(1, 2)),
        ("CacheKey(1, 2, 3, 4)", lambda: CacheKey(1, 2, 3, 4)),
        ("CacheKey(1, 2, 3, 4, 5)", lambda: CacheKey(1, 2, 3, 4, 5)),
        ("CacheKey(1)", lambda: CacheKey(1)),
        ("CacheKey(req_id=1)", lambda: CacheKey(req_id=1)),
        ("CacheKey(prompt_cluster_id=1, req_id=2)", lambda: CacheKey(prompt_cluster_id=1, req_id=2)),
        ("CacheKey(cluster_id=1, req_id=1, bad=1)", lambda: CacheKey(cluster_id=1, req_id=1, bad=1)),
        ("CacheKey(-1, 1)", lambda: CacheKey(-1, 1)),
        ("CacheKey(1, -1)", lambda: CacheKey(1, -1)),
        ("CacheKey(1, 'a')", lambda: CacheKey(1, "a")),
        ("CacheKey(1, 1, model_id=2**64)", lambda: CacheKey(1, 1, model_id=2**64)),
        ("CacheKey(1, True)", lambda: CacheKey(1, True)),
        ("BlocksCacheKey(1)", lambda: BlocksCacheKey(1)),
        ("BlocksCacheKey(1, 2)", lambda: BlocksCacheKey(1, 2)),
        ("BlocksCacheKey(1, 2, 3)", lambda: BlocksCacheKey(1, 2, 3)),
        ("BlocksCacheKey('a')", lambda: BlocksCacheKey("a")),
        ("BlocksCacheKey(1, 'b')", lambda: BlocksCacheKey(1, "b")),
        ("BlocksCacheKey(model_id=1)", lambda: BlocksCacheKey(model_id=1)),
        (
            "BlocksCacheKey(prompt_cluster_id=1, model_id=1)",
            lambda: BlocksCacheKey(prompt_cluster_id=1, model_id=1),
        ),
        ("BlocksCacheKey(cluster_id=1, x=1)", lambda: BlocksCacheKey(cluster_id=1, x=1)),
        ("BlocksCacheKey(-1)", lambda: BlocksCacheKey(-1)),
        ("CacheKeyByIdAndIndex(1, 2, 3)", lambda: CacheKeyByIdAndIndex(1, 2, 3)),
        ("CacheKeyByIdAndIndex(1, -5)", lambda: CacheKeyByIdAndIndex(1, -5)),
        ("CacheKeyByIdAndIndex(-1, 1)", lambda: CacheKeyByIdAndIndex(-1, 1)),
        ("CacheKeyByIdAndIndex(1, 1, 2**32)", lambda: CacheKeyByIdAndIndex(1, 1, 2**32)),
        ("CacheKeyByIdAndIndex(1, 'a')", lambda: CacheKeyByIdAndIndex(1, "a")),
        ("MemInfo(DEVICE, 1, 2)", lambda: MemInfo(Memtype.MEM_TYPE_DEVICE, 1, 2)),
        ("MemInfo(1, 1, 2)", lambda: MemInfo(1, 1, 2)),
        ("MemInfo(DEVICE, 'a', 2)", lambda: MemInfo(Memtype.MEM_TYPE_DEVICE, "a", 2)),
        ("MemInfo(DEVICE, 1, 2.0)", lambda: MemInfo(Memtype.MEM_TYPE_DEVICE, 1, 2.0)),
    ]
    for label, fn in cases:
        call(label, lambda fn=fn: repr(fn()))
    desc = CacheDesc(2, [3, 10], DataType.DT_FLOAT16, Placement.HOST, 0, 1, "ND")
    for name in (
        "num_tensors",
        "shape",
        "data_type",
        "placement",
        "batch_dim",
        "batch_size",
        "seq_len_dim_index",
        "kv_tensor_format",
        "size",
    ):
        call(f"CacheDesc.{name}", lambda name=name: getattr(desc, name))
        call(f"CacheDesc.{name} = (read-only)", set_attr(desc, name, 1))
    call("CacheDesc.batch_dim_index", lambda: desc.batch_dim_index)  # type: ignore[attr-defined]
    call("CacheDesc.update_dim(1, 5)", lambda: (desc.update_dim(1, 5), desc.shape, desc.size))
    call("CacheDesc(DT_STRING).size", lambda: CacheDesc(1, [2], DataType.DT_STRING).size)
    call("CacheDesc(BF16).size", lambda: CacheDesc(1, [2, 3], DataType.DT_BF16).size)
    key = CacheKey(1, 2, 3)
    for name in ("cluster_id", "prompt_cluster_id", "req_id", "model_id", "prefix_id"):
        call(f"CacheKey.{name}", lambda name=name: getattr(key, name))
    call("MemInfo str", lambda: str(MemInfo(Memtype.MEM_TYPE_DEVICE, 1, 2)))
    call(
        "MemInfo fields",
        lambda: [MemInfo(Memtype.MEM_TYPE_HOST, 3, 4).mem_type, MemInfo(Memtype.MEM_TYPE_HOST, 3, 4).addr],
    )
    host = CacheDesc(2, [4, 8], DataType.DT_INT8, Placement.HOST)
    device = CacheDesc(2, [4, 8], DataType.DT_INT8)
    call("Cache.create_cpu_cache(host, [a, b])", lambda: Cache.create_cpu_cache(host, [1, 2]))
    call("Cache.create_cpu_cache(device desc)", lambda: Cache.create_cpu_cache(device, [1, 2]))
    call("Cache.create_cpu_cache(host, [a])", lambda: Cache.create_cpu_cache(host, [1]))
    call("Cache.create_cpu_cache(host, (a, b))", lambda: Cache.create_cpu_cache(host, (1, 2)))
    call("Cache.create_cpu_cache(None, [])", lambda: Cache.create_cpu_cache(None, []))
    call("str(Cache.create_cpu_cache)", lambda: str(Cache.create_cpu_cache(host, [1, 2])))
    call("KvCache.create_cpu_cache(host, [a, b])", lambda: str(KvCache.create_cpu_cache(host, [1, 2])))
    call(
        "KvCache.create_cpu_cache(host, [[a, b]])",
        lambda: str(KvCache.create_cpu_cache(host, [[1, 2], [3, 4]])),
    )
    call("KvCache.create_cpu_cache(host, [])", lambda: KvCache.create_cpu_cache(host, []))
    call("KvCache.create_cpu_cache(host, [1, [2]])", lambda: KvCache.create_cpu_cache(host, [1, [2, 3]]))
    call("KvCache.create_cpu_cache(device)", lambda: KvCache.create_cpu_cache(device, [1, 2]))
    call("KvCache.create_cpu_cache(host, [1])", lambda: KvCache.create_cpu_cache(host, [1]))
    tcs: list[tuple[str, Callable[[], Any]]] = [
        ("TransferConfig(1, [1, 2])", lambda: TransferConfig(1, [1, 2])),
        ("TransferConfig(1, [1, 2], range(0, 1), 1)", lambda: TransferConfig(1, [1, 2], range(0, 1), 1)),
        ("TransferConfig(-1, [1])", lambda: TransferConfig(-1, [1])),
        ("TransferConfig(1, 5)", lambda: TransferConfig(1, 5)),
        ("TransferConfig(1, None)", lambda: TransferConfig(1, None)),
        ("TransferConfig(1, [-1])", lambda: TransferConfig(1, [-1])),
        ("TransferConfig(1, [1], range(0, 4, 2))", lambda: TransferConfig(1, [1], range(0, 4, 2))),
        ("TransferConfig(1, [1], range(2, 1))", lambda: TransferConfig(1, [1], range(2, 1))),
        ("TransferConfig(1, [1], [0, 1])", lambda: TransferConfig(1, [1], [0, 1])),
        ("TransferConfig(1, [1], None, -1)", lambda: TransferConfig(1, [1], None, -1)),
        (
            "TransferWithCacheKeyConfig(B(1), r(0,2), r(0,2))",
            lambda: TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 2), range(0, 2)),
        ),
        (
            "TransferWithCacheKeyConfig(B(1), r(0,2), r(0,1))",
            lambda: TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 2), range(0, 1)),
        ),
        ("TransferWithCacheKeyConfig(B(1)) no ranges", lambda: TransferWithCacheKeyConfig(BlocksCacheKey(1))),
        (
            "TransferWithCacheKeyConfig(B(1), step 2)",
            lambda: TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 4, 2), range(0, 2)),
        ),
        (
            "TransferWithCacheKeyConfig(B(1), batch 1)",
            lambda: TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 1), range(0, 1), 1),
        ),
        (
            "TransferWithCacheKeyConfig(ById, batch 1)",
            lambda: TransferWithCacheKeyConfig(CacheKeyByIdAndIndex(1, 1), range(0, 1), range(0, 1), 1),
        ),
        (
            "TransferWithCacheKeyConfig(CacheKey)",
            lambda: TransferWithCacheKeyConfig(CacheKey(1, 1), range(0, 1), range(0, 1)),
        ),
        (
            "TransferWithCacheKeyConfig(None)",
            lambda: TransferWithCacheKeyConfig(None, range(0, 1), range(0, 1)),
        ),
    ]
    for label, fn in tcs:
        call(label, lambda fn=fn: repr(fn()))
    tc = TransferConfig(1, [1, 2])
    for name, value in (
        ("dst_cluster_id", 2),
        ("dst_cluster_id", -2),
        ("dst_addrs", [3, 4]),
        ("dst_addrs", 3),
        ("src_layer_range", range(1, 2)),
        ("src_layer_range", range(2, 2)),
        ("src_batch_index", 3),
        ("src_batch_index", -3),
    ):
        call(f"TransferConfig.{name} = {value!r}", set_attr(tc, name, value))
    wc = TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 2), range(0, 2))
    for name, value in (
        ("src_batch_index", 1),
        ("src_batch_index", 0),
        ("dst_layer_range", range(1, 3)),
        ("dst_layer_range", range(3, 1)),
        ("cache_key", 5),
        ("cache_key", CacheKeyByIdAndIndex(1, 1)),
    ):
        call(f"TransferWithCacheKeyConfig.{name} = {value!r}", set_attr(wc, name, value))
    call("TransferWithCacheKeyConfig.dst_cluster_id", lambda: wc.dst_cluster_id)


# -- LLMDataDist -------------------------------------------------------------------------------
def pool_config(remote: bool = False, listen: str | None = None) -> dict[str, str]:
    config = LlmConfig()
    config.device_id = 0
    config.enable_cache_manager = True
    config.mem_pool_cfg = '{"memory_size": 1048576}'
    config.host_mem_pool_cfg = '{"memory_size": 1048576}'
    config.sync_kv_timeout = 3000
    config.enable_remote_cache_accessible = remote
    if listen:
        config.listen_ip_info = listen
        # the device's own address comes from local_comm_res (a rank table of one), as in hixl's own
        # tests: the real build's stubs have no hccn.conf to read it from otherwise
        config.local_comm_res = LOCAL_COMM_RES
    return config.generate_options()


def datadist_before_init() -> None:
    call("LLMDataDist(1, 1)", lambda: LLMDataDist(1, 1))
    call("LLMDataDist(PROMPT, -1)", lambda: LLMDataDist(LLMRole.PROMPT, -1))
    call("LLMDataDist(PROMPT, 'a')", lambda: LLMDataDist(LLMRole.PROMPT, "a"))
    dd = LLMDataDist(LLMRole.PROMPT, 1)
    call("cluster_id before init", lambda: dd.cluster_id)
    call("finalize before init", dd.finalize)
    call("cache_manager before init", lambda: dd.cache_manager)
    call("kv_cache_manager before init", lambda: dd.kv_cache_manager)
    call("link before init", lambda: dd.link("c", {1: 0, 2: 1}, "{}"))
    call("unlink before init", lambda: dd.unlink(1))
    call("query_register_mem_status before init", lambda: dd.query_register_mem_status(1))
    call("link_clusters before init", lambda: dd.link_clusters([], 1000))
    call("unlink_clusters before init", lambda: dd.unlink_clusters([], 1000))
    call("switch_role before init", lambda: dd.switch_role(LLMRole.DECODER))
    call("check_link_status before init", lambda: dd.check_link_status(1))
    call("init(options=list)", lambda: dd.init([]))
    flow = pool_config()
    flow["ge.flowGraphMemMaxSize"] = "1,2"
    call("init(flowGraphMemMaxSize=1,2)", lambda: dd.init(flow))
    flow["ge.flowGraphMemMaxSize"] = "x"
    call("init(flowGraphMemMaxSize=x)", lambda: dd.init(flow))
    flow["ge.flowGraphMemMaxSize"] = 5
    call("init(flowGraphMemMaxSize=5 int)", lambda: dd.init(flow))
    call("init({}) (v1 engine)", lambda: dd.init({}))
    tb = LlmConfig()
    tb.transfer_backend = "hixl"
    call("init(TransferBackend, no cache manager)", lambda: dd.init(tb.generate_options()))
    tb.enable_cache_manager = True
    tb.enable_remote_cache_accessible = False
    call("init(TransferBackend, remote off)", lambda: dd.init(tb.generate_options()))
    tb2 = LlmConfig()
    tb2.transfer_backend = "hixl"
    tb2.enable_cache_manager = True
    call("init(TransferBackend, no listen ip)", lambda: dd.init(tb2.generate_options()))
    lc = LlmConfig()
    lc.local_comm_res = ""
    lc.enable_cache_manager = False
    call("init(LocalCommRes, cache manager off)", lambda: dd.init(lc.generate_options()))
    bad_listen = pool_config()
    bad_listen["llm.listenIpInfo"] = "1.2.3.4"
    call("init(listenIpInfo without port)", lambda: dd.init(bad_listen))
    bad_listen["llm.listenIpInfo"] = "1.2.3.4:x"
    call("init(listenIpInfo port x)", lambda: dd.init(bad_listen))


def link_checks(dd: LLMDataDist) -> None:
    table = '{"server_list": []}'
    for label, args in (
        ("comm_name=1", (1, {1: 0, 2: 1}, table)),
        ("comm_name=None", (None, {1: 0, 2: 1}, table)),
        ("comm_name empty", ("", {1: 0, 2: 1}, table)),
        ("comm_name 128 chars", ("a" * 128, {1: 0, 2: 1}, table)),
        ("cluster_rank_info list", ("c", [1, 2], table)),
        ("cluster_rank_info str key", ("c", {"1": 0, 2: 1}, table)),
        ("cluster_rank_info 5 entries", ("c", {1: 0, 2: 1, 3: 2, 4: 3, 5: 4}, table)),
        ("cluster_rank_info key -1", ("c", {-1: 0, 2: 1}, table)),
        ("cluster_rank_info value 2**32", ("c", {1: 0, 2: 2**32}, table)),
        ("rank_table=1", ("c", {1: 0, 2: 1}, 1)),
        ("one cluster", ("c", {1: 0}, table)),
        ("unordered ranks", ("c", {1: 1, 2: 0}, table)),
    ):
        call(f"link({label})", lambda args=args: dd.link(*args))
    for label, arg in (("'x'", "x"), ("-1", -1), ("7 (unknown)", 7)):
        call(f"unlink({label})", lambda arg=arg: dd.unlink(arg))
        call(f"query_register_mem_status({label})", lambda arg=arg: dd.query_register_mem_status(arg))


def cluster(remote_id: int, port: int, local: bool = True) -> LLMClusterInfo:
    info = LLMClusterInfo()
    info.remote_cluster_id = remote_id
    if local:
        info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", port)
    return info


def link_clusters_checks(dd: LLMDataDist, port: int) -> None:
    call("link_clusters(timeout=0)", lambda: dd.link_clusters([cluster(1, port)], 0))
    call("link_clusters(timeout='1')", lambda: dd.link_clusters([cluster(1, port)], "1"))
    call("link_clusters(timeout=2**31)", lambda: dd.link_clusters([cluster(1, port)], 2**31))
    call("link_clusters('x')", lambda: dd.link_clusters("x", 1000))
    call("link_clusters([1])", lambda: dd.link_clusters([1], 1000))
    call("link_clusters(no local ip)", lambda: dd.link_clusters([cluster(1, port, local=False)], 1000))
    call("link_clusters(no remote id)", lambda: dd.link_clusters([LLMClusterInfo()], 1000))
    call("unlink_clusters(force='x')", lambda: dd.unlink_clusters([cluster(1, port)], 1000, "x"))
    call("unlink_clusters(timeout=-1)", lambda: dd.unlink_clusters([cluster(1, port)], -1))
    call("unlink_clusters(no remote id)", lambda: dd.unlink_clusters([LLMClusterInfo()], 1000))
    call("switch_role('p')", lambda: dd.switch_role("p"))
    call("switch_role(DECODER, 'x')", lambda: dd.switch_role(LLMRole.DECODER, "x"))
    call(
        "switch_role(DECODER, bad listen)", lambda: dd.switch_role(LLMRole.DECODER, {"llm.listenIpInfo": "x"})
    )
    call("check_link_status(1)", lambda: dd.check_link_status(1))
    call("kv_cache_manager", lambda: dd.kv_cache_manager)


def cache_manager_calls(dd: LLMDataDist, port: int) -> None:
    cm = call("cache_manager", lambda: dd.cache_manager)
    if cm is None:
        return
    blocks = CacheDesc(2, [4, 16], DataType.DT_INT8)
    plain = CacheDesc(2, [2, 16], DataType.DT_INT8)
    host_blocks = CacheDesc(2, [4, 16], DataType.DT_INT8, Placement.HOST)
    call("allocate_cache(None)", lambda: cm.allocate_cache(None))
    call("allocate_cache(desc, 'x')", lambda: cm.allocate_cache(plain, "x"))
    call("allocate_cache(desc, [1])", lambda: cm.allocate_cache(plain, [1]))
    call("allocate_cache(num_tensors 0)", lambda: cm.allocate_cache(CacheDesc(0, [2], DataType.DT_INT8)))
    call("allocate_blocks_cache(desc, 'k')", lambda: cm.allocate_blocks_cache(blocks, "k"))
    call("allocate_blocks_cache(None)", lambda: cm.allocate_blocks_cache(None))
    call("allocate_cache(too big)", lambda: cm.allocate_cache(CacheDesc(1, [4096, 4096], DataType.DT_INT8)))
    src = call(
        "allocate_cache(plain, keys)", lambda: cm.allocate_cache(plain, [CacheKey(1, 10), CacheKey(1, 11)])
    )
    dst = call("allocate_cache(plain)", lambda: cm.allocate_cache(plain))
    bsrc = call(
        "allocate_blocks_cache(blocks, key)", lambda: cm.allocate_blocks_cache(blocks, BlocksCacheKey(1, 0))
    )
    bdst = call("allocate_blocks_cache(blocks)", lambda: cm.allocate_blocks_cache(blocks))
    hb = call("allocate_blocks_cache(host)", lambda: cm.allocate_blocks_cache(host_blocks))
    call(
        "allocate_blocks_cache(blocks, same key)",
        lambda: cm.allocate_blocks_cache(blocks, BlocksCacheKey(1, 0)),
    )
    call("allocate_cache(plain, same keys)", lambda: cm.allocate_cache(plain, [CacheKey(1, 10)]))
    # local copies
    call("copy_cache(dst, src)", lambda: cm.copy_cache(dst, src))
    call("copy_cache(dst, src, 1, 1, 4, 8)", lambda: cm.copy_cache(dst, src, 1, 1, 4, 8))
    call("copy_cache(dst, src, size=0)", lambda: cm.copy_cache(dst, src, size=0))
    call("copy_cache(dst, bsrc)", lambda: cm.copy_cache(dst, bsrc))
    call("copy_cache(bdst, src)", lambda: cm.copy_cache(bdst, src))
    call("copy_cache(dst, src, 5)", lambda: cm.copy_cache(dst, src, 5))
    call("copy_cache(dst, src, -1)", lambda: cm.copy_cache(dst, src, -1))
    call("copy_cache(dst, src, req_id=-1)", lambda: cm.copy_cache(dst, src, req_id=-1))
    call("copy_cache(dst, src, offset=100)", lambda: cm.copy_cache(dst, src, offset=100))
    call("copy_cache('x', src)", lambda: cm.copy_cache("x", src))
    call("copy_blocks(bsrc, {0: [1, 2]})", lambda: cm.copy_blocks(bsrc, {0: [1, 2]}))
    call("copy_blocks(src, {0: [1]})", lambda: cm.copy_blocks(src, {0: [1]}))
    call("copy_blocks(bsrc, {0: 1})", lambda: cm.copy_blocks(bsrc, {0: 1}))
    call("copy_blocks(bsrc, {0: [9]})", lambda: cm.copy_blocks(bsrc, {0: [9]}))
    call("copy_blocks(bsrc, [])", lambda: cm.copy_blocks(bsrc, []))
    # swap
    cpu = Cache.create_cpu_cache(host_blocks, [host_bytes(64), host_bytes(64)])
    call("swap_blocks(bsrc, cpu, {0: 1})", lambda: cm.swap_blocks(bsrc, cpu, {0: 1}))
    call("swap_blocks(cpu, bdst, {1: 0})", lambda: cm.swap_blocks(cpu, bdst, {1: 0}))
    call("swap_blocks(bsrc, bdst, {0: 1})", lambda: cm.swap_blocks(bsrc, bdst, {0: 1}))
    call("swap_blocks(bsrc, cpu, {4: 1})", lambda: cm.swap_blocks(bsrc, cpu, {4: 1}))
    call("swap_blocks(bsrc, cpu, {0: 4})", lambda: cm.swap_blocks(bsrc, cpu, {0: 4}))
    call("swap_blocks(src, cpu, {0: 1})", lambda: cm.swap_blocks(src, cpu, {0: 1}))
    call("swap_blocks(bsrc, cpu, 'x')", lambda: cm.swap_blocks(bsrc, cpu, "x"))
    small = Cache.create_cpu_cache(
        CacheDesc(2, [4, 8], DataType.DT_INT8, Placement.HOST), [host_bytes(32), host_bytes(32)]
    )
    call("swap_blocks(bsrc, small block)", lambda: cm.swap_blocks(bsrc, small, {0: 1}))
    # registered caches
    a0, a1 = device_bytes(64), device_bytes(64)
    call("register_cache(desc, 1)", lambda: cm.register_cache(blocks, 1))
    call("register_cache(desc, [])", lambda: cm.register_cache(CacheDesc(1, [4], DataType.DT_INT8), []))
    call("register_cache(desc, [a])", lambda: cm.register_cache(blocks, [a0]))
    call("register_cache(desc, [a, 0])", lambda: cm.register_cache(blocks, [a0, 0]))
    call("register_cache(desc, [a, b], 'k')", lambda: cm.register_cache(blocks, [a0, a1], "k"))
    call("register_cache(remote_accessible='y')", lambda: cm.register_cache(blocks, [a0, a1], [], "y"))
    call("register_blocks_cache(desc, [a, b], 'k')", lambda: cm.register_blocks_cache(blocks, [a0, a1], "k"))
    reg = call(
        "register_cache(host, remote_accessible=False)",
        lambda: cm.register_cache(plain, [host_bytes(32), host_bytes(32)], [CacheKey(1, 20)], False),
    )
    rblocks = call("register_blocks_cache(device)", lambda: cm.register_blocks_cache(blocks, [a0, a1]))
    call("unregister_cache('1')", lambda: cm.unregister_cache("1"))
    call("unregister_cache(-2**63-1)", lambda: cm.unregister_cache(-(2**63) - 1))
    call("unregister_cache(999)", lambda: cm.unregister_cache(999))
    call("remove_cache_key(1)", lambda: cm.remove_cache_key(1))
    call("remove_cache_key(unknown)", lambda: cm.remove_cache_key(CacheKey(1, 99)))
    call("remove_cache_key(registered cache's key)", lambda: cm.remove_cache_key(CacheKey(1, 20)))
    call(
        "remap_registered_memory(MemInfo)",
        lambda: cm.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_DEVICE, 1234, 1)),
    )
    call(
        "remap_registered_memory([MemInfo])",
        lambda: cm.remap_registered_memory([MemInfo(Memtype.MEM_TYPE_DEVICE, 1234, 1)]),
    )
    call("remap_registered_memory('x')", lambda: cm.remap_registered_memory("x"))
    call("remap_registered_memory([1])", lambda: cm.remap_registered_memory([1]))
    call(
        "remap_registered_memory(HOST)",
        lambda: cm.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_HOST, 1, 1)),
    )
    call(
        "remap_registered_memory(addr 0)",
        lambda: cm.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_DEVICE, 0, 1)),
    )
    call(
        "remap_registered_memory(size 0)",
        lambda: cm.remap_registered_memory(MemInfo(Memtype.MEM_TYPE_DEVICE, 1, 0)),
    )
    call("check_cache_key(req)", lambda: cm.check_cache_key(CacheKey(1, 1)))
    call("check_cache_key(prefix)", lambda: cm.check_cache_key(CacheKey(1, U64, prefix_id=1)))
    call("check_cache_key(neither)", lambda: cm.check_cache_key(CacheKey(1, U64)))
    call("check_cache_key(both)", lambda: cm.check_cache_key(CacheKey(1, 1, prefix_id=1)))
    # pulls before a link, with bad arguments (argument checks come first)
    call("pull_cache(not linked)", lambda: cm.pull_cache(CacheKey(1, 10), dst))
    call("pull_cache(bad key type)", lambda: cm.pull_cache(BlocksCacheKey(1), dst))
    call("pull_cache(blocks dst)", lambda: cm.pull_cache(CacheKey(1, 10), bdst))
    call("pull_cache(size 0)", lambda: cm.pull_cache(CacheKey(1, 10), dst, 0, 0))
    call("pull_cache(batch -1)", lambda: cm.pull_cache(CacheKey(1, 10), dst, -1))
    call(
        "pull_cache(tensor_num_per_layer 0)",
        lambda: cm.pull_cache(CacheKey(1, 10), dst, tensor_num_per_layer=0),
    )
    call("pull_cache(key neither)", lambda: cm.pull_cache(CacheKey(1, U64), dst))
    call(
        "pull_cache(range step 2)",
        lambda: cm.pull_cache(CacheKey(1, 10), dst, src_layer_range=range(0, 2, 2)),
    )
    call("pull_cache(unknown kwarg)", lambda: cm.pull_cache(CacheKey(1, 10), dst, bogus=1))
    call("pull_blocks(not linked)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0], [1]))
    call("pull_blocks(dst plain)", lambda: cm.pull_blocks(BlocksCacheKey(1), dst, [0], [1]))
    call("pull_blocks(dst_blocks [])", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0], []))
    call("pull_blocks(src_blocks [])", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [], [0]))
    call("pull_blocks(CacheKey, src_blocks)", lambda: cm.pull_blocks(CacheKey(1, 10), bdst, [0], [0]))
    call("pull_blocks(src_blocks 0)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, 0, [0]))
    call("pull_blocks(key 'k')", lambda: cm.pull_blocks("k", bdst, [0], [0]))
    call("push_cache(remote off)", lambda: cm.push_cache(CacheKeyByIdAndIndex(1, 1), src))
    call("push_blocks(remote off)", lambda: cm.push_blocks(BlocksCacheKey(1), bsrc, [0], [0]))
    call(
        "transfer_cache_async(HOST)",
        lambda: cm.transfer_cache_async(hb, Always(), [TransferConfig(1, [1, 2])]),
    )
    call(
        "transfer_cache_async(sync None)",
        lambda: cm.transfer_cache_async(bsrc, None, [TransferConfig(1, [1, 2])]),
    )
    call(
        "transfer_cache_async(cfg key)",
        lambda: cm.transfer_cache_async(
            bsrc, Always(), [TransferWithCacheKeyConfig(BlocksCacheKey(1), range(0, 1), range(0, 1))]
        ),
    )
    call(
        "transfer_cache_async(src blocks only)",
        lambda: cm.transfer_cache_async(bsrc, Always(), [TransferConfig(1, [1, 2])], [0]),
    )
    call(
        "transfer_cache_async(block count)",
        lambda: cm.transfer_cache_async(bsrc, Always(), [TransferConfig(1, [1, 2])], [0], [0, 1]),
    )
    call(
        "transfer_cache_async(dst blocks no size)",
        lambda: cm.transfer_cache_async(src, Always(), [TransferConfig(1, [1, 2])], None, [0]),
    )
    call(
        "transfer_cache_async(size not blocks)",
        lambda: cm.transfer_cache_async(src, Always(), [TransferConfig(1, [1, 2])], None, None, 8),
    )
    call(
        "transfer_cache_async(odd tensors)",
        lambda: cm.transfer_cache_async(
            cm.allocate_cache(CacheDesc(3, [2, 4], DataType.DT_INT8)), Always(), [TransferConfig(1, [1, 2])]
        ),
    )
    call(
        "transfer_cache_async(layer out)",
        lambda: cm.transfer_cache_async(src, Always(), [TransferConfig(1, [1, 2], range(1, 2))]),
    )
    call(
        "transfer_cache_async(addrs count)",
        lambda: cm.transfer_cache_async(src, Always(), [TransferConfig(1, [1])]),
    )
    task = call(
        "transfer_cache_async(not linked)",
        lambda: cm.transfer_cache_async(src, Always(), [TransferConfig(1, [a0, a1])]),
    )
    if task is not None:
        call("CacheTask.synchronize (not linked)", lambda: task.synchronize(5000))
        call("CacheTask.get_results (not linked)", lambda: task.get_results(5000))
        call("CacheTask.synchronize(-1)", lambda: task.synchronize(-1))
    never = call(
        "transfer_cache_async(sync fails)",
        lambda: cm.transfer_cache_async(src, Never(), [TransferConfig(1, [a0, a1])]),
    )
    if never is not None:
        call("CacheTask.get_results (sync fails)", lambda: never.get_results(5000))
    # a link to oneself
    own = cluster(1, port)
    call("link_clusters(self)", lambda: dd.link_clusters([own], 5000))
    call("link_clusters(self) again", lambda: dd.link_clusters([own], 5000))
    call("link_clusters([]) ", lambda: dd.link_clusters([], 5000))
    call("link_clusters(nobody listening)", lambda: dd.link_clusters([cluster(7, 1)], 2000))
    call("pull_cache(CacheKey) self", lambda: cm.pull_cache(CacheKey(1, 10), dst))
    call("pull_cache(CacheKey) consumed", lambda: cm.pull_cache(CacheKey(1, 10), dst))
    call("pull_cache(ById) self", lambda: cm.pull_cache(CacheKeyByIdAndIndex(1, src.cache_id, 1), dst, 1))
    call("pull_cache(ById batch 5)", lambda: cm.pull_cache(CacheKeyByIdAndIndex(1, src.cache_id, 5), dst))
    call("pull_cache(ById unknown id)", lambda: cm.pull_cache(CacheKeyByIdAndIndex(1, 999), dst))
    call(
        "pull_cache(layers)",
        lambda: cm.pull_cache(CacheKey(1, 11), dst, src_layer_range=range(0, 1), dst_layer_range=range(0, 1)),
    )
    call(
        "pull_cache(layers, tnpl 3)",
        lambda: cm.pull_cache(
            CacheKey(1, 11),
            dst,
            src_layer_range=range(0, 1),
            dst_layer_range=range(0, 1),
            tensor_num_per_layer=3,
        ),
    )
    call("pull_cache(size 8)", lambda: cm.pull_cache(CacheKey(1, 11), dst, 0, 8))
    call("pull_cache(unknown key)", lambda: cm.pull_cache(CacheKey(1, 55), dst))
    call("pull_cache(unknown cluster)", lambda: cm.pull_cache(CacheKey(7, 11), dst))
    call("pull_blocks(self)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0, 1], [2, 3]))
    call("pull_blocks(unknown model)", lambda: cm.pull_blocks(BlocksCacheKey(1, 9), bdst, [0], [0]))
    call("pull_blocks(src block 9)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [9], [0]))
    call("pull_blocks(dst block 9)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0], [9]))
    call("pull_blocks(count mismatch)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0, 1], [0]))
    call(
        "pull_blocks(ById -> blocks)",
        lambda: cm.pull_blocks(CacheKeyByIdAndIndex(1, src.cache_id), bdst, [], [0, 1]),
    )
    call(
        "pull_blocks(layers)",
        lambda: cm.pull_blocks(
            BlocksCacheKey(1), bdst, [0], [1], src_layer_range=range(0, 1), dst_layer_range=range(0, 1)
        ),
    )
    call("switch_role(while linked)", lambda: dd.switch_role(LLMRole.DECODER))
    call("unlink_clusters(self)", lambda: dd.unlink_clusters([own], 5000))
    call("unlink_clusters(self) again", lambda: dd.unlink_clusters([own], 5000))
    call("unlink_clusters(force, not linked)", lambda: dd.unlink_clusters([cluster(7, 1)], 5000, True))
    call("unlink_clusters([])", lambda: dd.unlink_clusters([], 5000))
    call("pull_blocks(after unlink)", lambda: cm.pull_blocks(BlocksCacheKey(1), bdst, [0], [1]))
    call("switch_role(DECODER)", lambda: dd.switch_role(LLMRole.DECODER))
    call(
        "switch_role(PROMPT, listen)",
        lambda: dd.switch_role(LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"}),
    )
    # deallocation
    call("deallocate_cache(bsrc)", lambda: cm.deallocate_cache(bsrc))
    call("deallocate_blocks_cache(src)", lambda: cm.deallocate_blocks_cache(src))
    call("deallocate_cache('x')", lambda: cm.deallocate_cache("x"))
    call("deallocate_cache(src)", lambda: cm.deallocate_cache(src))
    call("deallocate_cache(src) again", lambda: cm.deallocate_cache(src))
    call("src.tensor_addrs after deallocate", lambda: src.tensor_addrs)
    call("deallocate_cache(registered)", lambda: cm.deallocate_cache(reg))
    call("deallocate_blocks_cache(bdst)", lambda: cm.deallocate_blocks_cache(bdst))
    call("deallocate_blocks_cache(registered)", lambda: cm.deallocate_blocks_cache(rblocks))
    call("deallocate_blocks_cache(cpu cache)", lambda: cm.deallocate_blocks_cache(cpu))
    call("unregister_cache(rblocks)", lambda: cm.unregister_cache(rblocks.cache_id))
    call("rblocks.tensor_addrs after unregister", lambda: len(rblocks.tensor_addrs))
    call("unregister_cache(reg)", lambda: cm.unregister_cache(reg.cache_id))


def remote_mode_calls(dd: LLMDataDist, port: int) -> None:
    cm = call("remote: cache_manager", lambda: dd.cache_manager)
    if cm is None:
        return
    blocks = CacheDesc(2, [4, 16], DataType.DT_INT8)
    plain = CacheDesc(2, [2, 16], DataType.DT_INT8)
    src = call("remote: allocate_cache(plain)", lambda: cm.allocate_cache(plain))
    bsrc = call(
        "remote: allocate_blocks_cache(key)", lambda: cm.allocate_blocks_cache(blocks, BlocksCacheKey(2, 0))
    )
    call("remote: allocate_blocks_cache", lambda: cm.allocate_blocks_cache(blocks, BlocksCacheKey(2, 1)))
    call("remote: pull_cache(CacheKey)", lambda: cm.pull_cache(CacheKey(2, 1), src))
    call("remote: push_cache(bad key)", lambda: cm.push_cache(BlocksCacheKey(2), src))
    call("remote: push_cache(None)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), None))
    call("remote: push_cache(blocks src)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), bsrc))
    call("remote: push_cache(size 8)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), src, size=8))
    call(
        "remote: push_cache(range mismatch)",
        lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), src, 0, range(0, 1), range(0, 2)),
    )
    call(
        "remote: push_cache(tnpl 0)",
        lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), src, tensor_num_per_layer=0),
    )
    call("remote: push_cache(not linked)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 1), src))
    call("remote: push_blocks(bad key)", lambda: cm.push_blocks(CacheKeyByIdAndIndex(2, 1), bsrc, [0], [0]))
    call("remote: push_blocks(plain src)", lambda: cm.push_blocks(BlocksCacheKey(2), src, [0], [0]))
    call("remote: push_blocks(dst [])", lambda: cm.push_blocks(BlocksCacheKey(2), bsrc, [0], []))
    call("remote: push_blocks(not linked)", lambda: cm.push_blocks(BlocksCacheKey(2), bsrc, [0], [1]))
    call(
        "remote: transfer_cache_async(TransferConfig)",
        lambda: cm.transfer_cache_async(bsrc, Always(), [TransferConfig(2, [1, 2])]),
    )
    own = cluster(2, port)
    call("remote: link_clusters(self)", lambda: dd.link_clusters([own], 5000))
    call("remote: push_blocks(self)", lambda: cm.push_blocks(BlocksCacheKey(2, 1), bsrc, [0, 1], [2, 3]))
    call("remote: push_blocks(self, dst 9)", lambda: cm.push_blocks(BlocksCacheKey(2, 1), bsrc, [0], [9]))
    call(
        "remote: push_blocks(self, layers)",
        lambda: cm.push_blocks(BlocksCacheKey(2, 1), bsrc, [0], [1], range(0, 1), range(1, 2)),
    )
    call("remote: push_cache(self)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, src.cache_id, 1), src))
    call("remote: push_cache(self, unknown id)", lambda: cm.push_cache(CacheKeyByIdAndIndex(2, 999), src))
    call(
        "remote: pull_cache(ById self)", lambda: cm.pull_cache(CacheKeyByIdAndIndex(2, src.cache_id, 1), src)
    )
    task = call(
        "remote: transfer_cache_async(self)",
        lambda: cm.transfer_cache_async(
            bsrc,
            Always(),
            [TransferWithCacheKeyConfig(BlocksCacheKey(2, 1), range(0, 1), range(0, 1))],
            [0],
            [1],
        ),
    )
    if task is not None:
        call("remote: CacheTask.synchronize", lambda: task.synchronize(5000))
        call("remote: CacheTask.get_results", lambda: task.get_results(5000))
    call(
        "remote: register_cache after link",
        lambda: cm.register_cache(blocks, [device_bytes(64), device_bytes(64)], [], True),
    )
    call("remote: unlink_clusters(self)", lambda: dd.unlink_clusters([own], 5000))


def single(port: int) -> None:
    surface()
    configs()
    cluster_info()
    descs_and_keys()
    datadist_before_init()
    dd = LLMDataDist(LLMRole.PROMPT, 1)
    call("init(pool config, listen)", lambda: dd.init(pool_config(listen=f"127.0.0.1:{port}")))
    call("init again (no-op)", lambda: dd.init(pool_config()))
    other = LLMDataDist(LLMRole.DECODER, 2)
    call("second LLMDataDist.init", lambda: other.init(pool_config()))
    call("llm_engine_instance is dd", lambda: LLMDataDist.llm_engine_instance is dd)
    link_checks(dd)
    link_clusters_checks(dd, port)
    cache_manager_calls(dd, port)
    call("finalize", dd.finalize)
    call("finalize again", dd.finalize)
    call("cache_manager after finalize", lambda: dd.cache_manager)
    dd2 = LLMDataDist(LLMRole.DECODER, 2)
    call(
        "init(remote accessible, listen)",
        lambda: dd2.init(pool_config(remote=True, listen=f"127.0.0.1:{port + 1}")),
    )
    remote_mode_calls(dd2, port + 1)
    cm2 = call("cache_manager (remote)", lambda: dd2.cache_manager)
    call("finalize (remote)", dd2.finalize)
    blocks = CacheDesc(2, [4, 16], DataType.DT_INT8)
    call("allocate_blocks_cache after finalize", lambda: cm2.allocate_blocks_cache(blocks))
    call("unregister_cache after finalize", lambda: cm2.unregister_cache(1))


def wait_for(path: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.1)
    return False


def server(port: int, flag: str) -> None:
    """The peer of the two-process calls: listens until the client says it is done."""
    dd = LLMDataDist(LLMRole.PROMPT, 10)
    call("2p server: init(listen)", lambda: dd.init(pool_config(listen=f"127.0.0.1:{port}")))
    call(
        "2p server: allocate_blocks_cache(key)",
        lambda: dd.cache_manager.allocate_blocks_cache(
            CacheDesc(2, [4, 16], DataType.DT_INT8), BlocksCacheKey(10)
        ),
    )
    with open(f"{flag}.ready", "w"):
        pass
    call("2p server: client finished", lambda: wait_for(f"{flag}.done", 120))
    call("2p server: finalize", dd.finalize)


def client(port: int, flag: str) -> None:
    """Links to the server process over TCP and back; no transfers (hixl's unit-test stubs copy
    between raw addresses and cannot cross processes)."""
    try:
        call("2p client: server ready", lambda: wait_for(f"{flag}.ready", 120))
        dd = LLMDataDist(LLMRole.DECODER, 11)
        call("2p client: init", lambda: dd.init(pool_config()))
        peer = cluster(10, port)
        call("2p client: link_clusters", lambda: dd.link_clusters([peer], 5000))
        call("2p client: link_clusters again", lambda: dd.link_clusters([peer], 5000))
        call("2p client: link_clusters(wrong remote id)", lambda: dd.link_clusters([cluster(12, port)], 3000))
        call("2p client: switch_role while linked", lambda: dd.switch_role(LLMRole.PROMPT))
        call("2p client: unlink_clusters", lambda: dd.unlink_clusters([peer], 5000))
        call("2p client: unlink_clusters again", lambda: dd.unlink_clusters([peer], 5000))
        call("2p client: link_clusters after unlink", lambda: dd.link_clusters([peer], 5000))
        call("2p client: unlink_clusters(force)", lambda: dd.unlink_clusters([peer], 5000, True))
        call("2p client: link_clusters after forced unlink", lambda: dd.link_clusters([peer], 5000))
        call("2p client: unlink_clusters (end)", lambda: dd.unlink_clusters([peer], 5000))
        call("2p client: switch_role(PROMPT)", lambda: dd.switch_role(LLMRole.PROMPT))
        call("2p client: finalize", dd.finalize)
    finally:
        with open(f"{flag}.done", "w"):
            pass


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("KVTEST_DIFF_PORT", "26701")))
    parser.add_argument("--phase", choices=("single", "server", "client"), default="single")
    parser.add_argument("--flag", default="", help="path prefix the two processes signal each other with")
    args = parser.parse_args()
    began = time.monotonic()
    if args.phase == "server":
        server(args.port, args.flag)
    elif args.phase == "client":
        client(args.port, args.flag)
    else:
        single(args.port)
    print(json.dumps({"done": round(time.monotonic() - began, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
