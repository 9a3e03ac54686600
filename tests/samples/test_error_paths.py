"""The documented errors a CANN upgrade can break: codes, exception types and messages.

Single-process (no peers; the backend is bound to a private store): a push with no link
(LLM_NOT_YET_LINK), ``link_clusters`` to a closed port (per-cluster LLM_LINK_FAILED, returned, not
raised), a second LLMDataDist in one process (LLM_FAILED "Cannot init multiple LLMDataDists").

Two roles: pulling a key p removed (LLM_KV_CACHE_NOT_EXIST, worded
``[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST``), and switch_role while a
link is up (LLM_EXIST_LINK on both ends; allowed again once the link is gone).
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from kvtest import patterns

P, D = 0, 1
_lone_seq = itertools.count()


def _code(api: Any, name: str) -> Any:
    return getattr(api.LLMStatusCode, name)


# -- single process ---------------------------------------------------------------------------------


@pytest.fixture
def lone(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Callable[..., Any], Any]]:
    """(api, make, backend): ``make(cluster_id, **LLMConfig properties)`` inits an LLMDataDist in this
    process; ``backend.to_device`` makes the device tensors a DEVICE cache is registered from.

    The run's backend, bound to a private in-memory store (no peers); every instance is finalized at
    teardown.
    """
    from torch.distributed import HashStore

    from kvtest.state import chosen_backend, settings_of

    backend, _ = chosen_backend(request.config)
    backend.bind(HashStore(), f"kvtest-lone/{os.getpid()}/{next(_lone_seq)}/", "p0")
    device_id = settings_of(request.config).device_id() or 0
    backend.set_device(device_id)
    api = backend.api
    made: list[Any] = []

    def make(cluster_id: int, role: Any = None, **props: Any) -> Any:
        config = api.LLMConfig()
        config.device_id = device_id
        for name, value in props.items():
            setattr(config, name, value)
        dd = api.LLMDataDist(role if role is not None else api.LLMRole.PROMPT, cluster_id)
        made.append(dd)
        dd.init(config.generate_options())
        return dd

    yield api, make, backend
    for dd in reversed(made):
        dd.finalize()


#: the seed of the lone tests' contents (they have no run seed: no peers)
LONE_SEED = 23


def _contents() -> list[torch.Tensor]:
    return [patterns.pattern([3, 10], torch.float32, seed=LONE_SEED, tensor_index=i, side="p") for i in range(2)]


def _device_tensors(backend: Any) -> list[torch.Tensor]:
    """Device memory, as a DEVICE cache needs: registration hands it to HCCL/HIXL as device memory
    (hicann/hixl src/llm_datadist/cache_mgr/comm_mem_manager.cc), which refuses host memory. It holds
    :func:`_contents`, so a refused call that wrote into it shows."""
    return [backend.to_device(t) for t in _contents()]


def _unchanged(backend: Any, tensors: list[torch.Tensor], name: str) -> None:
    patterns.check_all(_contents(), [backend.to_host(t) for t in tensors], name=name)


def _blocks_cache(api: Any, dd: Any, backend: Any, key: Any = None) -> tuple[Any, list[torch.Tensor]]:
    tensors = _device_tensors(backend)
    desc = api.CacheDesc(2, [3, 10], api.DataType.DT_FLOAT, api.Placement.DEVICE)
    cache = dd.cache_manager.register_blocks_cache(desc, [t.data_ptr() for t in tensors], key)
    return cache, tensors


def test_push_without_link(lone):
    api, make, backend = lone
    dd = make(P, local_comm_res="")
    cache, tensors = _blocks_cache(api, dd, backend, api.BlocksCacheKey(P, 0))
    with pytest.raises(api.LLMException) as raised:
        dd.cache_manager.push_blocks(api.BlocksCacheKey(D, 0), cache, src_blocks=[0], dst_blocks=[0])
    assert raised.value.status_code == _code(api, "LLM_NOT_YET_LINK"), str(raised.value)
    assert str(raised.value).startswith(
        "[push_blocks] failed, error code is LLMStatusCode.LLM_NOT_YET_LINK"
    ), str(raised.value)
    _unchanged(backend, tensors, "source cache after a refused push_blocks")
    dd.cache_manager.unregister_cache(cache.cache_id)


def test_push_cache_without_link(lone):
    api, make, backend = lone
    dd = make(P, local_comm_res="")
    tensors = _device_tensors(backend)
    desc = api.CacheDesc(2, [3, 10], api.DataType.DT_FLOAT, api.Placement.DEVICE)
    cache = dd.cache_manager.register_cache(desc, [t.data_ptr() for t in tensors])
    with pytest.raises(api.LLMException) as raised:
        dd.cache_manager.push_cache(api.CacheKeyByIdAndIndex(D, 1, 0), cache)
    assert raised.value.status_code == _code(api, "LLM_NOT_YET_LINK"), str(raised.value)
    assert str(raised.value).startswith(
        "[push_cache] failed, error code is LLMStatusCode.LLM_NOT_YET_LINK"
    ), str(raised.value)
    _unchanged(backend, tensors, "source cache after a refused push_cache")
    dd.cache_manager.unregister_cache(cache.cache_id)


def _closed_port(host: str) -> int:
    """A port nothing listens on: bound, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_link_clusters_to_closed_port(lone):
    api, make, _ = lone
    dd = make(D, local_comm_res="")
    info = api.LLMClusterInfo()
    info.remote_cluster_id = P
    info.append_local_ip_info("127.0.0.1", 0)
    info.append_remote_ip_info("127.0.0.1", _closed_port("127.0.0.1"))
    ret, codes = dd.link_clusters([info], 1000)  # documented: returns the failure, never raises it
    failed = _code(api, "LLM_LINK_FAILED")
    assert ret == failed, f"link_clusters to a closed port returned {ret}, expected {failed}"
    assert list(codes) == [failed], f"per-cluster codes {list(codes)}, expected [{failed}]"


def test_second_datadist_in_one_process(lone):
    api, make, _ = lone
    make(P, local_comm_res="")
    with pytest.raises(api.LLMException) as raised:
        make(D, local_comm_res="")
    assert raised.value.status_code == _code(api, "LLM_FAILED"), str(raised.value)
    assert "Cannot init multiple LLMDataDists" in str(raised.value), str(raised.value)


# -- two roles --------------------------------------------------------------------------------------

#: Group A cluster ids (the pull samples' --cluster_id 1 = P, 2 = D)
GA_P, GA_D = 1, 2


@pytest.mark.kv(topology="1p1d")
def test_pull_removed_key(kv, datadist):
    """P allocates a cache keyed on slots 0 and 1 and removes key 0; d's pull of it fails with
    LLM_KV_CACHE_NOT_EXIST, its pull of key 1 succeeds (byte-checked), and pulling key 1 again fails
    the same way (a pull releases the key), as documented. d's cache holds its own pattern in both
    slots from the start: after each refused pull nothing changed, after the pull only slot 1; p's
    source is unchanged by the pulls."""
    shape, dtype, num = [2, 64], torch.float16, 2
    pool = 1 << 20
    if kv.role == "p":
        node = datadist(GA_P, mem_pool=pool)
        api = node.api
        comm_id = node.link(["d0"])
        desc = api.CacheDesc(num, shape, api.DataType.DT_FLOAT16, api.Placement.DEVICE)
        keys = [api.CacheKey(GA_P, 0, 0), api.CacheKey(GA_P, 1, 0)]
        cache = node.allocate_cache(desc, keys)
        views = node.backend.tensors_at(shape, dtype, cache.tensor_addrs)
        for i, view in enumerate(views):
            patterns.fill(view, seed=kv.seed, tensor_index=i, side="p")
        node.cm.remove_cache_key(keys[0])
        kv.barrier("cache ready")
        kv.barrier("decoder pull end")
        node.check(node.expected(num, shape, dtype, side="p"), views, name="source cache after d's pulls")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.cm.remove_cache_key(keys[1])  # a no-op: d's pull consumed it
        node.deallocate(cache)
        node.finalize()
    else:
        node = datadist(GA_D, mem_pool=pool)
        api = node.api
        comm_id = node.link(["p0"])
        desc = api.CacheDesc(num, shape, api.DataType.DT_FLOAT16, api.Placement.DEVICE)
        cache = node.allocate_cache(desc)
        ours = node.expected(num, shape, dtype, side="d")  # both slots: what no refused pull may change
        views = node.pool_views(cache, ours)
        kv.barrier("cache ready")
        not_exist = _code(api, "LLM_KV_CACHE_NOT_EXIST")
        prefix = "[pull_cache] failed, error code is LLMStatusCode.LLM_KV_CACHE_NOT_EXIST"
        kv.step("pull_cache removed key")
        with pytest.raises(api.LLMException) as raised:
            node.cm.pull_cache(api.CacheKey(GA_P, 0, 0), cache, batch_index=0)
        assert raised.value.status_code == not_exist, str(raised.value)
        assert str(raised.value).startswith(prefix), str(raised.value)
        node.check(ours, views, name="cache after a refused pull_cache of a removed key")
        with node.measure("pull_cache", 64 * 2 * num):
            node.cm.pull_cache(api.CacheKey(GA_P, 1, 0), cache, batch_index=1)
        theirs = node.expected(num, shape, dtype, side="p")
        expected = [torch.stack([mine[0], pulled[1]]) for mine, pulled in zip(ours, theirs)]
        node.check(expected, views, name="cache after pull_cache of slot 1")
        kv.step("pull_cache consumed key")
        with pytest.raises(api.LLMException) as again:
            node.cm.pull_cache(api.CacheKey(GA_P, 1, 0), cache, batch_index=0)
        assert again.value.status_code == not_exist, str(again.value)
        assert str(again.value).startswith(prefix), str(again.value)
        node.check(expected, views, name="cache after a refused pull_cache of a consumed key")
        kv.barrier("decoder pull end")
        node.unlink(comm_id)
        kv.barrier("peer unlink end")
        node.deallocate(cache)
        node.finalize()


@pytest.mark.kv(topology="1p1d")
def test_switch_role_while_linked(kv, datadist):
    """switch_role raises LLM_EXIST_LINK on both ends of a one-sided link; once d's non-forced unlink
    ends it, both may switch again."""
    if kv.role == "p":
        node = datadist(P, listen=True, local_comm_res="")
    else:
        node = datadist(D, local_comm_res="")
    api = node.api
    exist = _code(api, "LLM_EXIST_LINK")
    if kv.role == "d":
        node.must_link_clusters(["p0"])
    kv.barrier("linked")
    kv.step("switch_role while linked")
    with pytest.raises(api.LLMException) as raised:
        node.dd.switch_role(api.LLMRole.DECODER if kv.role == "p" else api.LLMRole.PROMPT)
    assert raised.value.status_code == exist, str(raised.value)
    assert str(raised.value).startswith("[switch_role] failed, error code is LLMStatusCode.LLM_EXIST_LINK"), (
        str(raised.value)
    )
    kv.barrier("refused")
    if kv.role == "d":
        node.unlink_clusters(["p0"])  # non-forced: ends both sides
    kv.barrier("unlinked")
    if kv.role == "p":
        node.forget_links_to(["d0"])
        node.switch_role(api.LLMRole.DECODER)
    else:
        node.switch_role(api.LLMRole.PROMPT, listen=True)
    node.finalize()
