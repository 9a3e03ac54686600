"""Two-process scenarios for the sim backend: each is a pair of role functions (p0 and d0).

Each role runs in its own process (the test process and ``sim_peer.py``), follows one of the
llm_datadist samples' flows, and checks bytes. A failing role posts ``abort`` so the other side's
next barrier fails at once instead of waiting for its deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed import Store

from kvtest.backends import sim

WAIT_S = 20.0
RANK_TABLE = json.dumps(
    {
        "version": "1.2",
        "server_count": "1",
        "server_list": [
            {
                "server_id": "127.0.0.1",
                "device": [
                    {"device_id": "0", "device_ip": "127.0.0.1", "rank_id": "0"},
                    {"device_id": "1", "device_ip": "127.0.0.1", "rank_id": "1"},
                ],
            }
        ],
        "status": "completed",
    }
)


class PeerGone(AssertionError):
    """The other role failed or died; raised by a barrier instead of waiting out its deadline."""


@dataclass
class Ctx:
    store: Store
    ns: str
    role: str
    params: dict[str, Any]
    peer_alive: Callable[[], bool] | None = None

    def _key(self, name: str) -> str:
        return f"{self.ns}/scenario/{name}"

    def abort(self, why: str) -> None:
        self.store.set(self._key("abort"), f"{self.role}: {why}")

    def _check_peer(self, waiting_for: str) -> None:
        if self.store.check([self._key("abort")]):
            raise PeerGone(
                f"{self.role} waiting for {waiting_for}: {self.store.get(self._key('abort')).decode()}"
            )
        if self.peer_alive is not None and not self.peer_alive():
            raise PeerGone(f"{self.role} waiting for {waiting_for}: the peer process died")

    def barrier(self, name: str, parties: int = 2) -> None:
        key = self._key(f"barrier/{name}")
        self.store.add(key, 1)
        deadline = time.monotonic() + WAIT_S
        while int(self.store.add(key, 0)) < parties:
            self._check_peer(f"barrier {name!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.role}: barrier {name!r} not reached by the peer within {WAIT_S} s")
            time.sleep(0.002)


def pattern(shape: list[int], seed: int) -> torch.Tensor:
    """Distinct float32 values for every element and every seed."""
    n = 1
    for d in shape:
        n *= d
    return (torch.arange(n, dtype=torch.float32) + seed * 1_000_000).reshape(shape)


def assert_bytes(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    a = actual.contiguous().view(torch.uint8).flatten()
    e = expected.contiguous().view(torch.uint8).flatten()
    if not torch.equal(a, e):
        bad = (a != e).nonzero().flatten()
        raise AssertionError(
            f"{what}: bytes differ at {bad.numel()} offsets, first {int(bad[0])}: "
            f"expected {int(e[bad[0]])}, got {int(a[bad[0]])}"
        )


def start(
    role: sim.LLMRole, cluster_id: int, listen_port: int | None = None, **options: Any
) -> sim.LLMDataDist:
    config = sim.LLMConfig()
    config.device_id = 0
    for name, value in options.items():
        setattr(config, name, value)
    if listen_port is not None:
        config.listen_ip_info = f"127.0.0.1:{listen_port}"
    dd = sim.LLMDataDist(role, cluster_id)
    dd.init(config.generate_options())
    return dd


def cluster(remote_id: int, port: int) -> sim.LLMClusterInfo:
    info = sim.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", port)
    return info


def link_two_sided(ctx: Ctx, dd: sim.LLMDataDist, ranks: dict[int, int]) -> int:
    comm_id = dd.link("link", ranks, RANK_TABLE)
    deadline = time.monotonic() + WAIT_S
    while (status := dd.query_register_mem_status(comm_id)) != sim.RegisterMemStatus.OK:
        ctx._check_peer("the two-sided link")
        if status == sim.RegisterMemStatus.FAILED or time.monotonic() > deadline:
            raise RuntimeError("link failed")
        time.sleep(0.01)
    return comm_id


def expect_code(code: sim.LLMStatusCode, call: Callable[[], object]) -> str:
    try:
        call()
    except sim.LLMException as exc:
        assert exc.status_code == code, f"expected {code}, got {exc.status_code}: {exc}"
        return str(exc)
    raise AssertionError(f"expected LLMException {code}, nothing raised")


def ok(result: tuple[sim.LLMStatusCode, list[sim.LLMStatusCode]], what: str) -> None:
    if result[0] != sim.LLMStatusCode.LLM_SUCCESS:
        raise RuntimeError(f"{what} failed: {result}")


# -- two-sided: pull_cache ----------------------------------------------------------------------
PC_DESC = dict(num_tensors=4, shape=[2, 64], data_type=sim.DataType.DT_FLOAT)
POOL = '{"memory_size": 1048576}'


def pull_cache_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 1, enable_cache_manager=True, mem_pool_cfg=POOL)
    try:
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        cm = dd.cache_manager
        keys = [sim.CacheKey(1, 0, 0), sim.CacheKey(1, 1, 0)]
        cache = cm.allocate_cache(sim.CacheDesc(**PC_DESC), keys)
        for i, t in enumerate(sim.create_tensors([2, 64], torch.float32, cache.tensor_addrs)):
            t.copy_(pattern([2, 64], i + 1))
        ctx.barrier("cache ready")
        ctx.barrier("pulled")
        dd.unlink(comm)
        for key in keys:
            cm.remove_cache_key(key)
        cm.deallocate_cache(cache)
    finally:
        dd.finalize()


def pull_cache_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL)
    try:
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        cm = dd.cache_manager
        cache = cm.allocate_cache(sim.CacheDesc(**PC_DESC))
        ctx.barrier("cache ready")
        cm.pull_cache(sim.CacheKey(1, 0, 0), cache, batch_index=1)
        cm.pull_cache(sim.CacheKey(1, 1, 0), cache, batch_index=0)
        views = sim.create_tensors([2, 64], torch.float32, cache.tensor_addrs)
        for i, t in enumerate(views):
            assert_bytes(t[1], pattern([2, 64], i + 1)[0], f"tensor {i} slot 1")
            assert_bytes(t[0], pattern([2, 64], i + 1)[1], f"tensor {i} slot 0")
        msg = expect_code(
            sim.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, lambda: cm.pull_cache(sim.CacheKey(1, 0, 0), cache)
        )
        assert msg.startswith("[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, "), (
            msg
        )
        # by id and index, one layer of two tensors: P's layer 1 (tensors 2, 3) into D's layer 0
        for t in views:
            t.zero_()
        cm.pull_cache(
            sim.CacheKeyByIdAndIndex(1, 1, 1),
            cache,
            0,
            src_layer_range=range(1, 2),
            dst_layer_range=range(0, 1),
        )
        assert_bytes(views[0][0], pattern([2, 64], 3)[1], "layer pull tensor 0")
        assert_bytes(views[1][0], pattern([2, 64], 4)[1], "layer pull tensor 1")
        assert_bytes(views[2], torch.zeros(2, 64), "untouched tensor 2")
        cm.pull_cache(sim.CacheKeyByIdAndIndex(1, 1, 0), cache, 1, size=16)
        assert_bytes(views[3][1][:4], pattern([2, 64], 4)[0][:4], "size=16 pull")
        assert_bytes(views[3][1][4:], torch.zeros(60), "beyond size=16")
        ctx.barrier("pulled")
        dd.unlink(comm)
        cm.deallocate_cache(cache)
    finally:
        dd.finalize()


# -- two-sided: pull_blocks (registered memory) and swap_blocks ---------------------------------
PB_SHAPE = [4, 256]


def pull_blocks_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 1, enable_cache_manager=True)
    tensors = [pattern(PB_SHAPE, 10 + i) for i in range(2)]
    try:
        desc = sim.CacheDesc(2, PB_SHAPE, sim.DataType.DT_FLOAT)
        dd.cache_manager.register_blocks_cache(
            desc, [t.data_ptr() for t in tensors], sim.BlocksCacheKey(1, 0)
        )
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        ctx.barrier("ready")
        ctx.barrier("pulled")
        dd.unlink(comm)
    finally:
        dd.finalize()


def pull_blocks_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 2, enable_cache_manager=True)
    tensors = [torch.zeros(PB_SHAPE) for _ in range(2)]
    try:
        cm = dd.cache_manager
        desc = sim.CacheDesc(2, PB_SHAPE, sim.DataType.DT_FLOAT)
        cache = cm.register_blocks_cache(desc, [t.data_ptr() for t in tensors])
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        ctx.barrier("ready")
        cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, src_blocks=[0, 3], dst_blocks=[1, 2])
        for i, t in enumerate(tensors):
            src = pattern(PB_SHAPE, 10 + i)
            assert_bytes(t[1], src[0], f"tensor {i} block 1")
            assert_bytes(t[2], src[3], f"tensor {i} block 2")
            assert_bytes(t[[0, 3]], torch.zeros(2, 256), f"tensor {i} untouched blocks")
        cm.pull_blocks(
            sim.BlocksCacheKey(1, 0),
            cache,
            [1],
            [0],
            src_layer_range=range(1, 2),
            dst_layer_range=range(0, 1),
            tensor_num_per_layer=1,
        )
        assert_bytes(tensors[0][0], pattern(PB_SHAPE, 11)[1], "layer pull block 0")
        assert_bytes(tensors[1][0], torch.zeros(256), "layer pull other tensor")
        host = [torch.rand(PB_SHAPE) for _ in range(2)]
        cpu = sim.Cache.create_cpu_cache(
            sim.CacheDesc(2, PB_SHAPE, sim.DataType.DT_FLOAT, sim.Placement.HOST),
            [t.data_ptr() for t in host],
        )
        before = [t.clone() for t in tensors]
        cm.swap_blocks(cache, cpu, {1: 0, 2: 3})
        for i in range(2):
            assert_bytes(host[i][0], before[i][1], "swap out")
            assert_bytes(host[i][3], before[i][2], "swap out")
            tensors[i].zero_()
        cm.swap_blocks(cpu, cache, {0: 1, 3: 2})
        for i in range(2):
            assert_bytes(tensors[i][1:3], before[i][1:3], "swap in")
        ctx.barrier("pulled")
        dd.unlink(comm)
    finally:
        dd.finalize()


# -- two-sided: pull_blocks from a contiguous cache into blocks --------------------------------
def cache_to_blocks_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 1, enable_cache_manager=True, mem_pool_cfg=POOL)
    try:
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        cm = dd.cache_manager
        key = sim.CacheKey(1, 7, 0)
        cache = cm.allocate_cache(sim.CacheDesc(4, [2, 1024], sim.DataType.DT_FLOAT16), [key])
        for i, t in enumerate(sim.create_tensors([2, 1024], torch.float16, cache.tensor_addrs)):
            t.copy_(torch.arange(2048, dtype=torch.float16).reshape(2, 1024) + i)
        ctx.barrier("ready")
        ctx.barrier("pulled")
        dd.unlink(comm)
        cm.remove_cache_key(key)
        cm.deallocate_cache(cache)
    finally:
        dd.finalize()


def cache_to_blocks_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 2, enable_cache_manager=True)
    tensors = [torch.zeros(4, 512, dtype=torch.float16) for _ in range(4)]
    try:
        cm = dd.cache_manager
        desc = sim.CacheDesc(4, [4, 512], sim.DataType.DT_FLOAT16)
        cache = cm.register_blocks_cache(desc, [t.data_ptr() for t in tensors])
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        ctx.barrier("ready")
        msg = expect_code(
            sim.LLMStatusCode.LLM_PARAM_INVALID,
            lambda: cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [0], [3, 1]),
        )
        assert msg == "src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey.", msg
        cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [], [3, 1])
        for i, t in enumerate(tensors):
            slot = torch.arange(2048, dtype=torch.float16).reshape(2, 1024)[0] + i
            assert_bytes(t[3], slot[:512], f"tensor {i} first half")
            assert_bytes(t[1], slot[512:], f"tensor {i} second half")
        expect_code(
            sim.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST,
            lambda: cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [], [0, 2]),
        )
        ctx.barrier("pulled")
        dd.unlink(comm)
    finally:
        dd.finalize()


# -- one-sided: push_blocks (D links to P and pushes) ------------------------------------------
BLK = [3, 10]


def push_blocks_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="")
    tensors = [torch.ones(BLK) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(0, 0),
        )
        ctx.barrier("register end")
        ctx.barrier("push end")
        for i, t in enumerate(tensors):
            src = pattern(BLK, 20 + i)
            assert_bytes(t[0], src[0], f"tensor {i} row 0")
            assert_bytes(t[2], src[1], f"tensor {i} row 2")
        assert_bytes(tensors[0][1], pattern(BLK, 21)[2], "layered push row 1")
        assert_bytes(tensors[1][1], torch.ones(10), "row 1 of tensor 1 untouched")
        ok(dd.unlink_clusters([cluster(1, 0)], 5000, force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


def push_blocks_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="")
    tensors = [pattern(BLK, 20 + i) for i in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(1, 0),
        )
        ctx.barrier("register end")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        cm.push_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
        cm.push_blocks(
            sim.BlocksCacheKey(0, 0),
            cache,
            [2],
            [1],
            src_layer_range=range(1, 2),
            dst_layer_range=range(0, 1),
            tensor_num_per_layer=1,
        )
        ctx.barrier("push end")
        ok(dd.unlink_clusters([cluster(0, ctx.params["p_port"])], 5000, force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


# -- one-sided: push_cache into the peer's first registered cache (id 1) -----------------------
def push_cache_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="")
    tensors = [torch.zeros(BLK) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors]
        )
        assert cache.cache_id == 1, cache.cache_id
        ctx.barrier("register end")
        ctx.barrier("push end")
        for i, t in enumerate(tensors):
            assert_bytes(t[0], pattern(BLK, 30 + i)[2], f"tensor {i} row 0")
            assert_bytes(t[1:], torch.zeros(2, 10), f"tensor {i} rows 1-2")
        ctx.barrier("wait unlink end")
        # D's non-forced unlink took down both ends: no link is left here
        dd.switch_role(sim.LLMRole.PROMPT)
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


def push_cache_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="")
    tensors = [pattern(BLK, 30 + i) for i in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors]
        )
        ctx.barrier("register end")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        cm.push_cache(
            sim.CacheKeyByIdAndIndex(cluster_id=0, cache_id=1, batch_index=0), cache, src_batch_index=2
        )
        ctx.barrier("push end")
        ok(dd.unlink_clusters([cluster(0, ctx.params["p_port"])], 5000), "unlink")
        ctx.barrier("wait unlink end")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


# -- switch_role: D pulls from P, the roles swap, D (now the server) pushes into P -------------
def switch_role_p(ctx: Ctx) -> None:
    port = ctx.params["p_port"]
    dd = start(sim.LLMRole.PROMPT, 0, port, local_comm_res="")
    tensors = [torch.ones(BLK) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(0, 0),
        )
        ctx.barrier("b1")
        ctx.barrier("linked")
        msg = expect_code(sim.LLMStatusCode.LLM_EXIST_LINK, lambda: dd.switch_role(sim.LLMRole.DECODER))
        assert msg.startswith("[switch_role] failed, error code is LLMStatusCode.LLM_EXIST_LINK, "), msg
        ctx.barrier("b2 decoder unlink")
        dd.switch_role(sim.LLMRole.DECODER)
        ctx.barrier("b3")
        ctx.barrier("b4")
        ok(dd.link_clusters([cluster(1, port)], 5000), "link")
        ctx.barrier("b5")
        ctx.barrier("b6")
        expected = torch.tensor([1.0, 0.0, 1.0]).unsqueeze(1).expand(3, 10)
        for i, t in enumerate(tensors):
            assert_bytes(t, expected, f"tensor {i} after push")
        ok(dd.unlink_clusters([cluster(1, port)], force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


def switch_role_d(ctx: Ctx) -> None:
    port = ctx.params["p_port"]
    dd = start(sim.LLMRole.DECODER, 1, local_comm_res="")
    tensors = [torch.zeros(BLK) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(1, 0),
        )
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(0, port)], 5000), "link")
        ctx.barrier("linked")
        cm.pull_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
        ok(dd.unlink_clusters([cluster(0, port)], 5000), "unlink")
        ctx.barrier("b2 decoder unlink")
        ctx.barrier("b3")
        # P closed its listen port when it became a client
        code, codes = dd.link_clusters([cluster(0, port)], 1000)
        assert codes == [sim.LLMStatusCode.LLM_LINK_FAILED], codes
        dd.switch_role(sim.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"})
        ctx.barrier("b4")
        ctx.barrier("b5")
        cm.push_blocks(
            sim.BlocksCacheKey(0, 0),
            cache,
            [0, 1, 2],
            [0, 1, 2],
            src_layer_range=range(0, 2),
            dst_layer_range=range(0, 2),
            tensor_num_per_layer=1,
        )
        ctx.barrier("b6")
        ok(dd.unlink_clusters([cluster(0, port)], force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


# -- transfer_cache_async: P (client of D) pushes layer by layer --------------------------------
class Ready(sim.LayerSynchronizer):
    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.seen: list[int] = []

    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        self.seen.append(layer_index)
        return layer_index != self.refuse


ASYNC_SHAPE = [4, 16]


def async_p(ctx: Ctx) -> None:
    dd = start(
        sim.LLMRole.PROMPT,
        0,
        ctx.params["p_port"],
        enable_cache_manager=True,
        enable_remote_cache_accessible=True,
    )
    tensors = [pattern(ASYNC_SHAPE, 40 + i) for i in range(4)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(4, ASYNC_SHAPE, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(0, 0),
        )
        ctx.barrier("registered")
        ok(dd.link_clusters([cluster(1, ctx.params["d_port"])], 5000), "link")
        sync = Ready()
        config = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1, 0), range(0, 2), range(0, 2))
        task = cm.transfer_cache_async(cache, sync, [config])
        assert task.synchronize(10_000) == sim.LLMStatusCode.LLM_SUCCESS
        assert task.get_results() == [sim.LLMStatusCode.LLM_SUCCESS]
        assert sync.seen == [0, 1], sync.seen
        refused = cm.transfer_cache_async(
            cache,
            Ready(refuse=1),
            [sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1, 0), range(1, 2), range(1, 2))],
            src_block_indices=[0],
            dst_block_indices=[0],
        )
        assert refused.get_results(10_000) == [sim.LLMStatusCode.LLM_PARAM_INVALID]
        ctx.barrier("transfer end")
        ok(dd.unlink_clusters([cluster(1, ctx.params["d_port"])], force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


def async_d(ctx: Ctx) -> None:
    dd = start(
        sim.LLMRole.DECODER,
        1,
        ctx.params["d_port"],
        enable_cache_manager=True,
        enable_remote_cache_accessible=True,
    )
    tensors = [torch.zeros(ASYNC_SHAPE) for _ in range(4)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(4, ASYNC_SHAPE, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(1, 0),
        )
        ctx.barrier("registered")
        ctx.barrier("transfer end")
        for i, t in enumerate(tensors):
            assert_bytes(t, pattern(ASYNC_SHAPE, 40 + i), f"tensor {i}")
        ok(dd.unlink_clusters([cluster(0, ctx.params["p_port"])], force=True), "unlink")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


# -- hixl: both listen, each links to the other; P pulls while D pushes ------------------------
def hixl_p(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="", transfer_backend="hixl")
    tensors = [torch.zeros(BLK) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(0, 0),
        )
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(1, ctx.params["d_port"])], 5000), "link")
        cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, src_blocks=[2], dst_blocks=[2])
        ctx.barrier("b2")
        ok(dd.unlink_clusters([cluster(1, ctx.params["d_port"])], 5000), "unlink")
        ctx.barrier("b3")
        for i, t in enumerate(tensors):
            assert_bytes(t, pattern(BLK, 50 + i), f"tensor {i}")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


def hixl_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="", transfer_backend="hixl")
    tensors = [pattern(BLK, 50 + i) for i in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT),
            [t.data_ptr() for t in tensors],
            sim.BlocksCacheKey(1, 0),
        )
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        cm.push_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 1])
        ctx.barrier("b2")
        ok(dd.unlink_clusters([cluster(0, ctx.params["p_port"])], 5000), "unlink")
        ctx.barrier("b3")
        cm.unregister_cache(cache.cache_id)
    finally:
        dd.finalize()


# -- stall: the transfer never completes -> LLM_TIMEOUT after sync_kv_timeout -------------------
def stall_d(ctx: Ctx) -> None:
    dd = start(sim.LLMRole.DECODER, 2, enable_cache_manager=True, sync_kv_timeout=300)
    tensors = [torch.zeros(PB_SHAPE) for _ in range(2)]
    try:
        cm = dd.cache_manager
        cache = cm.register_blocks_cache(
            sim.CacheDesc(2, PB_SHAPE, sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors]
        )
        comm = link_two_sided(ctx, dd, {1: 0, 2: 1})
        ctx.barrier("ready")
        began = time.monotonic()
        msg = expect_code(
            sim.LLMStatusCode.LLM_TIMEOUT, lambda: cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, [0], [0])
        )
        took = time.monotonic() - began
        assert 0.25 <= took < 3.0, took
        assert msg.startswith("[pull_blocks] failed, error code is LLMStatusCode.LLM_TIMEOUT, "), msg
        assert "300 ms" in msg, msg
        assert_bytes(tensors[0], torch.zeros(PB_SHAPE), "nothing arrived")
        ctx.barrier("pulled")
        dd.unlink(comm)
    finally:
        dd.finalize()


ROLES: dict[str, dict[str, Callable[[Ctx], None]]] = {
    "pull_cache": {"p0": pull_cache_p, "d0": pull_cache_d},
    "pull_blocks": {"p0": pull_blocks_p, "d0": pull_blocks_d},
    "cache_to_blocks": {"p0": cache_to_blocks_p, "d0": cache_to_blocks_d},
    "push_blocks": {"p0": push_blocks_p, "d0": push_blocks_d},
    "push_cache": {"p0": push_cache_p, "d0": push_cache_d},
    "switch_role": {"p0": switch_role_p, "d0": switch_role_d},
    "transfer_cache_async": {"p0": async_p, "d0": async_d},
    "hixl": {"p0": hixl_p, "d0": hixl_d},
    "stall": {"p0": pull_blocks_p, "d0": stall_d},
}


def run_role(
    store: Store,
    scenario: str,
    role: str,
    namespace: str,
    params: dict[str, Any],
    peer_alive: Callable[[], bool] | None,
) -> None:
    """Configure the sim control plane for ``role`` and run it; on failure tell the peer first."""
    sim.configure(store, namespace, role)
    ctx = Ctx(store, namespace, role, params, peer_alive)
    try:
        ROLES[scenario][role](ctx)
    except BaseException as exc:
        ctx.abort(f"{type(exc).__name__}: {exc}")
        raise
