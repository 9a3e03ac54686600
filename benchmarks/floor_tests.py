"""The tests ``benchmarks/floor.py`` runs: what a 1p1d sample test pays before it moves a byte.

Not collected by the sample or harness runs (it is named by path only). Each kind repeats ``ROUNDS``
times; every one checks what it did, so a floor measured on a broken run fails instead of reading low.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from kvtest.node import Node
from kvtest.state import devices_of, settings_of

ROUNDS = 30
P, D = 1, 2


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_rendezvous(kv, round_: int) -> None:
    """The kv fixture, one value published and read back, one barrier."""
    kv.publish("round", round_)
    assert kv.fetch(kv.peers[0], "round") == round_
    kv.barrier("done")


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_init(kv, datadist, round_: int) -> None:
    """+ an LLMDataDist initialised (p listening, as the one-sided samples) and finalised on each role."""
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p")
    assert node.dd is not None
    kv.barrier("initialised")
    node.finalize()


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_link(kv, datadist, round_: int) -> None:
    """+ d's ``link_clusters`` to p (it fails the test unless LLM_SUCCESS) and one more barrier."""
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p")
    kv.barrier("initialised")
    if kv.role == "d":
        node.must_link_clusters(kv.roles_of("p"))
    kv.barrier("linked")
    node.finalize()


def _pull_round(kv, node: Node, *, link: bool, unlink: bool) -> None:
    """:func:`test_pull`'s body on ``node`` without init and finalize; d links and unlinks only as told."""
    shape, dtype = (2, 512), torch.float16
    api = node.api
    desc = api.CacheDesc(1, list(shape), node.datatype(dtype), api.Placement.DEVICE)
    tensors = node.tensors(1, shape, dtype, side=kv.me)
    cache = node.register_blocks_cache(desc, tensors, api.BlocksCacheKey(node.cluster_id, 0))
    kv.barrier("registered")
    if kv.role == "p":
        kv.barrier("pulled")
        node.check(node.expected_lazily(1, shape, dtype, side=kv.me), tensors, name="source after the pull")
    else:
        if link:
            node.must_link_clusters(["p0"])
        with node.measure("pull_blocks", 2 * 512):
            node.cm.pull_blocks(api.BlocksCacheKey(P, 0), cache, src_blocks=[0], dst_blocks=[1])
        node.check(node.expected_after_rows(1, shape, dtype, base=kv.me, source="p0", src_rows=[0], dst_rows=[1]),
                   tensors, name="cache after the pull")
        if unlink:
            node.unlink_clusters(["p0"])
        kv.barrier("pulled")
    node.unregister(cache)


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_pull(kv, datadist, round_: int) -> None:
    """The smallest whole sample test: the pull_blocks xPyD flow with one 2 KiB tensor of 2 blocks, d
    pulling block 0 into its block 1 and checking every byte, p checking its source; its one transfer is
    timed, so this kind has an outside/inside ratio of its own."""
    node = datadist(P if kv.role == "p" else D, listen=kv.role == "p", local_comm_res="")
    _pull_round(kv, node, link=True, unlink=True)
    node.finalize()


#: the LLMDataDist the kept kinds share between their rounds: (kind, instance, listen address), one at a time
_held: list[tuple[str, Any, str | None]] = []


def _let_go() -> None:
    while _held:
        _, dd, _ = _held.pop()
        dd.finalize()


@pytest.fixture(scope="module", autouse=True)
def _finalize_kept() -> Iterator[None]:
    yield
    _let_go()


def _kept_node(kind: str, kv, kv_backend, request) -> tuple[Node, bool]:
    """This role's LLMDataDist for ``kind``: made by its first round (one-sided, p listening, as
    :func:`test_pull`'s), then kept: later rounds publish its addresses again and use it as it is.
    Whether it was made now."""
    settings = settings_of(request.config)
    node = Node(kv, kv_backend, settings, P if kv.role == "p" else D,
                devices_of(request.config).by_role.get(kv.me, 0))
    if _held and _held[0][0] == kind:
        _, node.dd, node.listen = _held[0]
        node.publish()
        return node, False
    _let_go()
    api = node.api
    config = api.LLMConfig()
    config.device_id = node.device_id
    config.local_comm_res = ""
    if kv.role == "p":
        node.listen = f"{node.host_ip}:{node.free_port()}"
        config.listen_ip_info = node.listen
    node.init(config.generate_options(), api.LLMRole.PROMPT if kv.role == "p" else api.LLMRole.DECODER)
    _held.append((kind, node.dd, node.listen))
    return node, True


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_pull_kept(kv, kv_backend, request, round_: int) -> None:
    """:func:`test_pull` on one LLMDataDist per role kept from round to round (as a session-scoped
    LLMDataDist would be): no init or finalize after the first round; d still links and unlinks each round."""
    node, _ = _kept_node("kept", kv, kv_backend, request)
    _pull_round(kv, node, link=True, unlink=True)


@pytest.mark.kv(topology="1p1d")
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_pull_linked(kv, kv_backend, request, round_: int) -> None:
    """:func:`test_pull_kept` with d's link kept too: made by the first round, unlinked by the last. What a
    decode process that keeps one LLMDataDist and its links for hours pays per request it checks."""
    node, made = _kept_node("linked", kv, kv_backend, request)
    if made and kv.role == "d":
        node.must_link_clusters(["p0"])
    _pull_round(kv, node, link=False, unlink=round_ == ROUNDS - 1)
