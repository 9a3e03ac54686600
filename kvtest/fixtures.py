"""Fixtures the sample tests stand on: the backend bound to the test, and LLMDataDist nodes.

``kv_backend`` is the selected backend (npu or sim), bound to this test's rendezvous. ``datadist``
makes an initialized LLMDataDist for this role (``datadist(cluster_id, listen=True, ...)``) and
returns a :class:`kvtest.node.Node`; whatever the body leaves is released at teardown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, Union

import pytest

from kvtest.backends.protocol import Backend
from kvtest.node import Node
from kvtest.run.scope import TestScope
from kvtest.settings import Settings
from kvtest.state import BODY_FAILED, chosen_backend, devices_of, settings_of

__all__ = ["datadist", "kv_backend"]

#: a cluster id, or a function of this node's (host ip, port) giving one (the xPyD sample's ids)
ClusterId = Union[int, Callable[[str, int], int]]


def _device_id(settings: Settings, role: str, backend: Backend, claims: list[Any]) -> int:
    chosen = settings.device_id()
    if chosen is not None:
        return chosen
    if backend.name == "sim":
        # Each role its own emulated device, as a one-host rank table (two-sided link) requires.
        from kvtest.roles.topology import parse_role_name

        side, rank = parse_role_name(role)
        return 2 * rank + (side != "p")
    from kvtest.host.devpool import claim_visible

    # a logical id (what set_device takes); the claim locks the physical device host-wide
    device_id, claim = claim_visible(timeout=settings.join_timeout)
    claims.append(claim)  # held for the whole session; the OS releases it if the process dies
    return device_id


@pytest.fixture
def kv_backend(kv: TestScope, request: pytest.FixtureRequest) -> Backend:
    """The run's backend, bound to this test's rendezvous, with this role's device selected."""
    backend, _ = chosen_backend(request.config)
    backend.bind(kv.store.raw, f"{kv.store.prefix}{kv.prefix}backend/", kv.me)
    settings = settings_of(request.config)
    devices = devices_of(request.config)
    if kv.me not in devices.by_role:
        devices.by_role[kv.me] = _device_id(settings, kv.me, backend, devices.claims)
        backend.set_device(devices.by_role[kv.me])
    return backend




@pytest.fixture
def datadist(
    kv: TestScope, kv_backend: Backend, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Node]]:
    """Factory: ``datadist(cluster_id, listen=False, mem_pool=None, host_mem_pool=None, local_comm_res=None,
    ...)``; the pools are ``memory_size`` bytes (``mem_pool_cfg`` / ``host_mem_pool_cfg``).

    ``cluster_id`` may be a function of the node's (host ip, port), for ids made from the address.

    Builds the options as the samples do (``LLMConfig``), inits an LLMDataDist for this role and
    publishes the node's addresses. One per process at a time, as the API requires.
    """
    settings = settings_of(request.config)
    nodes: list[Node] = []

    def make(
        cluster_id: ClusterId,
        *,
        listen: bool = False,
        mem_pool: int | None = None,
        host_mem_pool: int | None = None,
        local_comm_res: str | None = None,
        cache_manager: bool = True,
        remote_cache_accessible: bool | None = None,
        sync_kv_timeout_ms: int | None = None,
        transfer_backend: str | None = None,
        role: Any = None,
    ) -> Node:
        api = kv_backend.api
        node = Node(kv, kv_backend, settings, 0, devices_of(request.config).by_role.get(kv.me, 0))
        port = node.free_port() if listen or callable(cluster_id) else 0
        node.cluster_id = cluster_id(node.host_ip, port) if callable(cluster_id) else cluster_id
        config = api.LLMConfig()
        config.device_id = node.device_id
        if local_comm_res is not None:
            config.local_comm_res = local_comm_res
        else:
            config.enable_cache_manager = cache_manager
        if remote_cache_accessible is not None:
            config.enable_remote_cache_accessible = remote_cache_accessible
        if mem_pool is not None:
            config.mem_pool_cfg = json.dumps({"memory_size": mem_pool})
        if host_mem_pool is not None:
            config.host_mem_pool_cfg = json.dumps({"memory_size": host_mem_pool})
        if sync_kv_timeout_ms is None:
            sync_kv_timeout_ms = settings.sync_kv_timeout
        if sync_kv_timeout_ms is not None:
            config.sync_kv_timeout = sync_kv_timeout_ms
        if transfer_backend:
            config.transfer_backend = transfer_backend
        if listen:
            node.listen = f"{node.host_ip}:{port}"
            config.listen_ip_info = node.listen
        if role is None:
            role = api.LLMRole.PROMPT if kv.role == "p" else api.LLMRole.DECODER
        nodes.append(node)
        kv.step("init")
        node.init(config.generate_options(), role)
        return node

    yield make
    problems = [p for node in nodes for p in node.release()]
    if problems or request.node.stash.get(BODY_FAILED, False):
        kv_backend.after_failure()
    if problems and not request.node.stash.get(BODY_FAILED, False):
        pytest.fail("teardown could not release: " + "; ".join(problems), pytrace=False)
