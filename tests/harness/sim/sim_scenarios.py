"""Two-process scenarios for the sim backend, driven without kvtest's fixtures.

Each scenario is a pair of role functions (p0 and d0) in :data:`SCENARIOS`. Each role runs in its own
process (the test process and ``sim_peer.py``), follows one llm_datadist sample's flow against the sim
directly, and checks bytes with :mod:`kvtest.patterns`. A failing role posts ``abort`` so the other
side's next barrier fails at once (:class:`PeerFailed`) instead of waiting for its deadline.

What these catch that the sample suite does not: every flow over UCX's TCP transport (the sample
suite runs on one host, over shared memory), and contract details the samples do not reach (partial
``size=`` pulls, swap to a host cache, the exact messages of refused calls, the stall fault's timing).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed import Store

from kvtest import patterns
from kvtest.backends import sim
from kvtest.backends.sim.device import to_device

WAIT_S = 20.0
SEED = 20260801
POOL = '{"memory_size": 1048576}'
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
TWO_SIDED_RANKS = {1: 0, 2: 1}


class PeerFailed(AssertionError):
    """The other role failed or died: raised by a barrier here, or for the peer process's answer."""


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

    def check_peer(self, waiting_for: str) -> None:
        if self.store.check([self._key("abort")]):
            raise PeerFailed(
                f"{self.role} waiting for {waiting_for}: {self.store.get(self._key('abort')).decode()}"
            )
        if self.peer_alive is not None and not self.peer_alive():
            raise PeerFailed(f"{self.role} waiting for {waiting_for}: the peer process died")

    def barrier(self, *names: str, parties: int = 2) -> None:
        """Each named barrier in turn: every party arrives before anyone goes on."""
        for name in names:
            key = self._key(f"barrier/{name}")
            self.store.add(key, 1)
            deadline = time.monotonic() + WAIT_S
            while int(self.store.add(key, 0)) < parties:
                self.check_peer(f"barrier {name!r}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.role}: barrier {name!r} not reached by the peer within {WAIT_S} s")
                time.sleep(0.002)


# -- contents and checks ---------------------------------------------------------------------------
def content(shape: Sequence[int], index: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Distinct bytes for every (index, row, offset): tensor ``index`` of the scenario's source."""
    return patterns.pattern(list(shape), dtype, seed=SEED, tensor_index=index)


def same(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    patterns.check(expected, actual, name=what, tensor_index=0)


# -- a node's life ---------------------------------------------------------------------------------
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


@contextmanager
def node(role: sim.LLMRole, cluster_id: int, listen_port: int | None = None, **options: Any) -> Iterator[Any]:
    """An initialized LLMDataDist, finalized however the role ends."""
    dd = start(role, cluster_id, listen_port, **options)
    try:
        yield dd
    finally:
        dd.finalize()


def blocks(
    cm: Any, tensors: list[torch.Tensor], key: Any = None, dtype: Any = sim.DataType.DT_FLOAT
) -> Any:
    """Register ``tensors`` as one blocks cache (under ``key`` when given)."""
    desc = sim.CacheDesc(len(tensors), list(tensors[0].shape), dtype)
    addrs = [t.data_ptr() for t in tensors]
    return cm.register_blocks_cache(desc, addrs) if key is None else cm.register_blocks_cache(desc, addrs, key)


def cluster(remote_id: int, port: int) -> sim.LLMClusterInfo:
    info = sim.LLMClusterInfo()
    info.remote_cluster_id = remote_id
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", port)
    return info


def connected(dd: sim.LLMDataDist, what: str) -> None:
    """The link set its connections up, as the real one does: the transfers after it time bytes only."""
    waiting = dd._transport.unconnected()  # the sim's own state
    assert not waiting, f"after {what}, no connection yet to {waiting}"


def link_two_sided(ctx: Ctx, dd: sim.LLMDataDist) -> int:
    comm_id = dd.link("link", TWO_SIDED_RANKS, RANK_TABLE)
    deadline = time.monotonic() + WAIT_S
    while (status := dd.query_register_mem_status(comm_id)) != sim.RegisterMemStatus.OK:
        ctx.check_peer("the two-sided link")
        if status == sim.RegisterMemStatus.FAILED or time.monotonic() > deadline:
            raise RuntimeError("link failed")
        time.sleep(0.01)
    connected(dd, "the two-sided link")
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


def unlink(dd: Any, remote_id: int, port: int, *, force: bool = True) -> None:
    ok(dd.unlink_clusters([cluster(remote_id, port)], 5000, force=force), "unlink")


# -- two-sided: pull_cache ---------------------------------------------------------------------------
PC_SHAPE = [2, 64]
PC_DESC = dict(num_tensors=4, shape=PC_SHAPE, data_type=sim.DataType.DT_FLOAT)


def pull_cache_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 1, enable_cache_manager=True, mem_pool_cfg=POOL) as dd:
        comm = link_two_sided(ctx, dd)
        cm = dd.cache_manager
        keys = [sim.CacheKey(1, 0, 0), sim.CacheKey(1, 1, 0)]
        cache = cm.allocate_cache(sim.CacheDesc(**PC_DESC), keys)
        for i, t in enumerate(sim.create_tensors(PC_SHAPE, torch.float32, cache.tensor_addrs)):
            t.copy_(content(PC_SHAPE, i))
        ctx.barrier("cache ready", "pulled")
        dd.unlink(comm)
        for key in keys:
            cm.remove_cache_key(key)
        cm.deallocate_cache(cache)


def pull_cache_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 2, enable_cache_manager=True, mem_pool_cfg=POOL) as dd:
        comm = link_two_sided(ctx, dd)
        cm = dd.cache_manager
        cache = cm.allocate_cache(sim.CacheDesc(**PC_DESC))
        ctx.barrier("cache ready")
        cm.pull_cache(sim.CacheKey(1, 0, 0), cache, batch_index=1)
        cm.pull_cache(sim.CacheKey(1, 1, 0), cache, batch_index=0)
        views = sim.create_tensors(PC_SHAPE, torch.float32, cache.tensor_addrs)
        for i, t in enumerate(views):
            same(t[1], content(PC_SHAPE, i)[0], f"tensor {i} slot 1")
            same(t[0], content(PC_SHAPE, i)[1], f"tensor {i} slot 0")
        msg = expect_code(
            sim.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, lambda: cm.pull_cache(sim.CacheKey(1, 0, 0), cache)
        )
        assert msg.startswith("[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, "), msg
        # by id and index, one layer of two tensors: P's layer 1 (tensors 2, 3) into D's layer 0
        for t in views:
            t.zero_()
        cm.pull_cache(
            sim.CacheKeyByIdAndIndex(1, 1, 1), cache, 0, src_layer_range=range(1, 2), dst_layer_range=range(0, 1)
        )
        same(views[0][0], content(PC_SHAPE, 2)[1], "layer pull tensor 0")
        same(views[1][0], content(PC_SHAPE, 3)[1], "layer pull tensor 1")
        same(views[2], torch.zeros(PC_SHAPE), "untouched tensor 2")
        cm.pull_cache(sim.CacheKeyByIdAndIndex(1, 1, 0), cache, 1, size=16)
        same(views[3][1][:4], content(PC_SHAPE, 3)[0][:4], "size=16 pull")
        same(views[3][1][4:], torch.zeros(60), "beyond size=16")
        ctx.barrier("pulled")
        dd.unlink(comm)
        cm.deallocate_cache(cache)


# -- two-sided: pull_blocks (registered memory) and swap_blocks to a host cache ---------------------
PB_SHAPE = [4, 256]


def pull_blocks_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 1, enable_cache_manager=True) as dd:
        tensors = [to_device(content(PB_SHAPE, i)) for i in range(2)]
        blocks(dd.cache_manager, tensors, sim.BlocksCacheKey(1, 0))
        comm = link_two_sided(ctx, dd)
        ctx.barrier("ready", "pulled")
        dd.unlink(comm)


def pull_blocks_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 2, enable_cache_manager=True) as dd:
        tensors = [to_device(torch.zeros(PB_SHAPE)) for _ in range(2)]
        cm = dd.cache_manager
        cache = blocks(cm, tensors)
        comm = link_two_sided(ctx, dd)
        ctx.barrier("ready")
        cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, src_blocks=[0, 3], dst_blocks=[1, 2])
        for i, t in enumerate(tensors):
            same(t, patterns.with_rows(torch.zeros(PB_SHAPE), content(PB_SHAPE, i), src_rows=[0, 3],
                                       dst_rows=[1, 2]), f"tensor {i}")
        cm.pull_blocks(
            sim.BlocksCacheKey(1, 0), cache, [1], [0],
            src_layer_range=range(1, 2), dst_layer_range=range(0, 1), tensor_num_per_layer=1,
        )
        same(tensors[0][0], content(PB_SHAPE, 1)[1], "layer pull block 0")
        same(tensors[1][0], torch.zeros(256), "layer pull other tensor")
        host = [torch.rand(PB_SHAPE) for _ in range(2)]
        cpu = sim.Cache.create_cpu_cache(
            sim.CacheDesc(2, PB_SHAPE, sim.DataType.DT_FLOAT, sim.Placement.HOST), [t.data_ptr() for t in host]
        )
        before = [t.clone() for t in tensors]
        cm.swap_blocks(cache, cpu, {1: 0, 2: 3})
        for i in range(2):
            same(host[i][[0, 3]], before[i][[1, 2]], f"swap out, tensor {i}")
            tensors[i].zero_()
        cm.swap_blocks(cpu, cache, {0: 1, 3: 2})
        for i in range(2):
            same(tensors[i][1:3], before[i][1:3], f"swap in, tensor {i}")
        ctx.barrier("pulled")
        dd.unlink(comm)


# -- two-sided: pull_blocks from a contiguous cache into blocks --------------------------------------
CB_SLOT = [2, 1024]


def cache_to_blocks_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 1, enable_cache_manager=True, mem_pool_cfg=POOL) as dd:
        comm = link_two_sided(ctx, dd)
        cm = dd.cache_manager
        key = sim.CacheKey(1, 7, 0)
        cache = cm.allocate_cache(sim.CacheDesc(4, CB_SLOT, sim.DataType.DT_FLOAT16), [key])
        for i, t in enumerate(sim.create_tensors(CB_SLOT, torch.float16, cache.tensor_addrs)):
            t.copy_(content(CB_SLOT, i, torch.float16))
        ctx.barrier("ready", "pulled")
        dd.unlink(comm)
        cm.remove_cache_key(key)
        cm.deallocate_cache(cache)


def cache_to_blocks_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 2, enable_cache_manager=True) as dd:
        tensors = [to_device(torch.zeros(4, 512, dtype=torch.float16)) for _ in range(4)]
        cm = dd.cache_manager
        cache = blocks(cm, tensors, dtype=sim.DataType.DT_FLOAT16)
        comm = link_two_sided(ctx, dd)
        ctx.barrier("ready")
        msg = expect_code(
            sim.LLMStatusCode.LLM_PARAM_INVALID, lambda: cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [0], [3, 1])
        )
        assert msg == "src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey.", msg
        cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [], [3, 1])
        for i, t in enumerate(tensors):
            slot = content(CB_SLOT, i, torch.float16)[0]
            same(t[3], slot[:512], f"tensor {i} first half")
            same(t[1], slot[512:], f"tensor {i} second half")
        expect_code(
            sim.LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, lambda: cm.pull_blocks(sim.CacheKey(1, 7, 0), cache, [], [0, 2])
        )
        ctx.barrier("pulled")
        dd.unlink(comm)


# -- one-sided: push_blocks (D links to P and pushes) ------------------------------------------------
BLK = [3, 10]


def push_blocks_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="") as dd:
        tensors = [to_device(torch.ones(BLK)) for _ in range(2)]
        cache = blocks(dd.cache_manager, tensors, sim.BlocksCacheKey(0, 0))
        ctx.barrier("register end", "push end")
        for i, t in enumerate(tensors):
            same(t[[0, 2]], content(BLK, i)[[0, 1]], f"tensor {i} rows 0 and 2")
        same(tensors[0][1], content(BLK, 1)[2], "layered push row 1")
        same(tensors[1][1], torch.ones(10), "row 1 of tensor 1 untouched")
        unlink(dd, 1, 0)
        dd.cache_manager.unregister_cache(cache.cache_id)


def push_blocks_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="") as dd:
        cm = dd.cache_manager
        tensors = [to_device(content(BLK, i)) for i in range(2)]  # registered memory: held for the whole flow
        cache = blocks(cm, tensors, sim.BlocksCacheKey(1, 0))
        ctx.barrier("register end")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        connected(dd, "link_clusters")
        cm.push_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
        cm.push_blocks(
            sim.BlocksCacheKey(0, 0), cache, [2], [1],
            src_layer_range=range(1, 2), dst_layer_range=range(0, 1), tensor_num_per_layer=1,
        )
        ctx.barrier("push end")
        unlink(dd, 0, ctx.params["p_port"])
        cm.unregister_cache(cache.cache_id)


# -- one-sided: push_cache into the peer's first registered cache (id 1) ------------------------------
def push_cache_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="") as dd:
        tensors = [to_device(torch.zeros(BLK)) for _ in range(2)]
        cm = dd.cache_manager
        cache = cm.register_cache(sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors])
        assert cache.cache_id == 1, cache.cache_id
        ctx.barrier("register end", "push end")
        for i, t in enumerate(tensors):
            same(t[0], content(BLK, i)[2], f"tensor {i} row 0")
            same(t[1:], torch.zeros(2, 10), f"tensor {i} rows 1-2")
        ctx.barrier("wait unlink end")
        # D's non-forced unlink took down both ends: no link is left here
        dd.switch_role(sim.LLMRole.PROMPT)
        cm.unregister_cache(cache.cache_id)


def push_cache_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="") as dd:
        tensors = [to_device(content(BLK, i)) for i in range(2)]
        cm = dd.cache_manager
        cache = cm.register_cache(sim.CacheDesc(2, BLK, sim.DataType.DT_FLOAT), [t.data_ptr() for t in tensors])
        ctx.barrier("register end")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        cm.push_cache(sim.CacheKeyByIdAndIndex(cluster_id=0, cache_id=1, batch_index=0), cache, src_batch_index=2)
        ctx.barrier("push end")
        unlink(dd, 0, ctx.params["p_port"], force=False)
        ctx.barrier("wait unlink end")
        cm.unregister_cache(cache.cache_id)


# -- switch_role: D pulls from P, the roles swap, D (now the server) pushes into P ------------------
def switch_role_p(ctx: Ctx) -> None:
    port = ctx.params["p_port"]
    with node(sim.LLMRole.PROMPT, 0, port, local_comm_res="") as dd:
        tensors = [to_device(torch.ones(BLK)) for _ in range(2)]
        cache = blocks(dd.cache_manager, tensors, sim.BlocksCacheKey(0, 0))
        ctx.barrier("b1", "linked")
        msg = expect_code(sim.LLMStatusCode.LLM_EXIST_LINK, lambda: dd.switch_role(sim.LLMRole.DECODER))
        assert msg.startswith("[switch_role] failed, error code is LLMStatusCode.LLM_EXIST_LINK, "), msg
        ctx.barrier("link seen", "b2 decoder unlink")
        dd.switch_role(sim.LLMRole.DECODER)
        ctx.barrier("b3", "b4")
        ok(dd.link_clusters([cluster(1, port)], 5000), "link")
        ctx.barrier("b5", "b6")
        expected = torch.tensor([1.0, 0.0, 1.0]).unsqueeze(1).expand(3, 10)
        for i, t in enumerate(tensors):
            same(t, expected, f"tensor {i} after push")
        unlink(dd, 1, port)
        dd.cache_manager.unregister_cache(cache.cache_id)


def switch_role_d(ctx: Ctx) -> None:
    port = ctx.params["p_port"]
    with node(sim.LLMRole.DECODER, 1, local_comm_res="") as dd:
        cm = dd.cache_manager
        tensors = [to_device(torch.zeros(BLK)) for _ in range(2)]  # registered memory: held for the whole flow
        cache = blocks(cm, tensors, sim.BlocksCacheKey(1, 0))
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(0, port)], 5000), "link")
        ctx.barrier("linked")
        cm.pull_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 2])
        ctx.barrier("link seen")  # P's switch_role must meet the link before this unlink removes it
        unlink(dd, 0, port, force=False)
        ctx.barrier("b2 decoder unlink", "b3")
        # P closed its listen port when it became a client
        code, codes = dd.link_clusters([cluster(0, port)], 1000)
        assert codes == [sim.LLMStatusCode.LLM_LINK_FAILED], codes
        dd.switch_role(sim.LLMRole.PROMPT, {"llm.listenIpInfo": f"127.0.0.1:{port}"})
        ctx.barrier("b4", "b5")
        cm.push_blocks(
            sim.BlocksCacheKey(0, 0), cache, [0, 1, 2], [0, 1, 2],
            src_layer_range=range(0, 2), dst_layer_range=range(0, 2), tensor_num_per_layer=1,
        )
        ctx.barrier("b6")
        unlink(dd, 0, port)
        cm.unregister_cache(cache.cache_id)


# -- transfer_cache_async: P (client of D) pushes layer by layer -------------------------------------
class Ready(sim.LayerSynchronizer):
    def __init__(self, refuse: int | None = None) -> None:
        self.refuse = refuse
        self.seen: list[int] = []

    def synchronize_layer(self, layer_index: int, timeout_in_millis: int | None) -> bool:
        self.seen.append(layer_index)
        return layer_index != self.refuse


ASYNC_SHAPE = [4, 16]
ASYNC_OPTIONS = dict(enable_cache_manager=True, enable_remote_cache_accessible=True)


def async_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], **ASYNC_OPTIONS) as dd:
        cm = dd.cache_manager
        tensors = [to_device(content(ASYNC_SHAPE, i)) for i in range(4)]  # registered memory: held for the whole flow
        cache = blocks(cm, tensors, sim.BlocksCacheKey(0, 0))
        ctx.barrier("registered")
        ok(dd.link_clusters([cluster(1, ctx.params["d_port"])], 5000), "link")
        sync = Ready()
        every_block = list(range(ASYNC_SHAPE[0]))
        config = sim.TransferWithCacheKeyConfig(sim.BlocksCacheKey(1, 0), range(0, 2), range(0, 2))
        task = cm.transfer_cache_async(
            cache, sync, [config], src_block_indices=every_block, dst_block_indices=every_block
        )
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
        unlink(dd, 1, ctx.params["d_port"])
        cm.unregister_cache(cache.cache_id)


def async_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 1, ctx.params["d_port"], **ASYNC_OPTIONS) as dd:
        tensors = [to_device(torch.zeros(ASYNC_SHAPE)) for _ in range(4)]
        cache = blocks(dd.cache_manager, tensors, sim.BlocksCacheKey(1, 0))
        ctx.barrier("registered", "transfer end")
        for i, t in enumerate(tensors):
            same(t, content(ASYNC_SHAPE, i), f"tensor {i}")
        unlink(dd, 0, ctx.params["p_port"])
        dd.cache_manager.unregister_cache(cache.cache_id)


# -- hixl: both listen, each links to the other; P pulls while D pushes -------------------------------
def hixl_p(ctx: Ctx) -> None:
    with node(sim.LLMRole.PROMPT, 0, ctx.params["p_port"], local_comm_res="", transfer_backend="hixl") as dd:
        tensors = [to_device(torch.zeros(BLK)) for _ in range(2)]
        cm = dd.cache_manager
        cache = blocks(cm, tensors, sim.BlocksCacheKey(0, 0))
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(1, ctx.params["d_port"])], 5000), "link")
        cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, src_blocks=[2], dst_blocks=[2])
        ctx.barrier("b2")
        unlink(dd, 1, ctx.params["d_port"], force=False)
        ctx.barrier("b3")
        for i, t in enumerate(tensors):
            same(t, content(BLK, i), f"tensor {i}")
        cm.unregister_cache(cache.cache_id)


def hixl_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 1, ctx.params["d_port"], local_comm_res="", transfer_backend="hixl") as dd:
        cm = dd.cache_manager
        tensors = [to_device(content(BLK, i)) for i in range(2)]  # registered memory: held for the whole flow
        cache = blocks(cm, tensors, sim.BlocksCacheKey(1, 0))
        ctx.barrier("b1")
        ok(dd.link_clusters([cluster(0, ctx.params["p_port"])], 5000), "link")
        cm.push_blocks(sim.BlocksCacheKey(0, 0), cache, src_blocks=[0, 1], dst_blocks=[0, 1])
        ctx.barrier("b2")
        unlink(dd, 0, ctx.params["p_port"], force=False)
        ctx.barrier("b3")
        cm.unregister_cache(cache.cache_id)


# -- stall: the transfer never completes -> LLM_TIMEOUT after sync_kv_timeout -------------------------
def stall_d(ctx: Ctx) -> None:
    with node(sim.LLMRole.DECODER, 2, enable_cache_manager=True, sync_kv_timeout=300) as dd:
        tensors = [to_device(torch.zeros(PB_SHAPE)) for _ in range(2)]
        cm = dd.cache_manager
        cache = blocks(cm, tensors)
        comm = link_two_sided(ctx, dd)
        ctx.barrier("ready")
        began = time.monotonic()
        msg = expect_code(
            sim.LLMStatusCode.LLM_TIMEOUT, lambda: cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, [0], [0])
        )
        took = time.monotonic() - began
        assert 0.3 <= took < 30, took  # ends at sync_kv_timeout (300 ms), never a hang
        assert msg.startswith("[pull_blocks] failed, error code is LLMStatusCode.LLM_TIMEOUT, "), msg
        try:  # the sim's explanation (the deadline it waited) is the exception's cause
            cm.pull_blocks(sim.BlocksCacheKey(1, 0), cache, [0], [0])
        except sim.LLMException as exc:
            assert "300 ms" in str(exc.__cause__), exc.__cause__
        same(tensors[0], torch.zeros(PB_SHAPE), "nothing arrived")
        ctx.barrier("pulled")
        dd.unlink(comm)


@dataclass(frozen=True)
class Scenario:
    p0: Callable[[Ctx], None]
    d0: Callable[[Ctx], None]


#: every flow; test_sim_pairs runs the transfer flows over TCP, test_sim_faults the fault flows
SCENARIOS: dict[str, Scenario] = {
    "pull_cache": Scenario(pull_cache_p, pull_cache_d),
    "pull_blocks": Scenario(pull_blocks_p, pull_blocks_d),
    "cache_to_blocks": Scenario(cache_to_blocks_p, cache_to_blocks_d),
    "push_blocks": Scenario(push_blocks_p, push_blocks_d),
    "push_cache": Scenario(push_cache_p, push_cache_d),
    "switch_role": Scenario(switch_role_p, switch_role_d),
    "transfer_cache_async": Scenario(async_p, async_d),
    "hixl": Scenario(hixl_p, hixl_d),
    "stall": Scenario(pull_blocks_p, stall_d),
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
        getattr(SCENARIOS[scenario], role)(ctx)
    except BaseException as exc:
        ctx.abort(f"{type(exc).__name__}: {exc}")
        raise
