"""One LLMDataDist of one role, as the sample tests drive it: :class:`Node`.

A Node publishes its addresses to the peers, builds links from what the peers published (nobody
edits IP lists), records what the test registers and links, and releases what the body left in the
samples' order (unlink, unregister or deallocate, finalize), whatever the outcome.
"""

from __future__ import annotations

import ctypes
import ipaddress
import math
import random
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import pytest
import torch

from kvtest import patterns
from kvtest.backends.protocol import Backend
from kvtest.host import reused_memory
from kvtest.host.linkcheck import LinkPeer, explain_link_failure
from kvtest.host.ranktable import cluster_rank_info, rank_table_json
from kvtest.results.metrics import phase
from kvtest.run.scope import TestScope
from kvtest.settings import Settings

__all__ = ["RANK_DEVICE", "TORCH_TO_DATATYPE", "Node", "free_port", "host_ip", "host_tensors_at"]

#: the key a member of a two-sided link publishes its physical device id and device IP under
RANK_DEVICE = "rank device"

#: the first and the longest pause between two ``query_register_mem_status`` polls of a two-sided link
LINK_POLL_FIRST_S = 0.001
LINK_POLL_MAX_S = 0.01

#: torch dtype -> llm_datadist DataType member name
TORCH_TO_DATATYPE = {
    torch.float16: "DT_FLOAT16",
    torch.bfloat16: "DT_BF16",
    torch.float32: "DT_FLOAT",
    torch.int8: "DT_INT8",
    torch.int32: "DT_INT32",
    torch.int64: "DT_INT64",
    torch.uint8: "DT_UINT8",
}


def host_ip(settings: Settings) -> str:
    """This host's address as the peers should dial it."""
    if settings.local_host_ip:
        return settings.local_host_ip
    rdv = settings.rendezvous
    if rdv is None or rdv.scheme != "tcp":
        return "127.0.0.1"
    # The address this host uses to reach the rendezvous is one the peers can reach it on.
    family = socket.AF_INET6 if ":" in rdv.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((rdv.host, rdv.port))
        return str(sock.getsockname()[0])


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


#: where :func:`free_port` looks: below the kernel's ephemeral range, so no outgoing connection takes one
PORT_RANGE = (20000, 32000)


def free_port(host: str, slot: int = 0, slots: int = 1) -> int:
    """A port to listen on, from part ``slot`` of ``slots`` equal parts of :data:`PORT_RANGE`.

    The roles of a run each pick from their own part: the xPyD samples make a cluster id from ip:port,
    so two roles on one host must never draw the same port, and a port probed free and released is
    held by no one until the LLMDataDist listens on it (two roles of a 1p2d smoke test drew the same
    one: ``blocks cache key ... already exists``).
    """
    if not 0 <= slot < slots:
        raise ValueError(f"port slot {slot} is not in 0..{slots - 1}")
    width = (PORT_RANGE[1] - PORT_RANGE[0]) // slots
    low = PORT_RANGE[0] + slot * width
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(low, low + width)
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{low + width - 1} on {host}")


def host_tensors_at(shape: Sequence[int], dtype: torch.dtype, addrs: Sequence[int]) -> list[torch.Tensor]:
    """CPU tensors viewing host memory at raw addresses (no copy); the owner keeps the memory alive."""
    nbytes = dtype.itemsize
    for dim in shape:
        nbytes *= int(dim)
    return [
        torch.frombuffer((ctypes.c_uint8 * nbytes).from_address(addr), dtype=torch.uint8)
        .view(dtype)
        .view(list(shape))
        for addr in addrs
    ]


class _PhasedBackend:
    """The backend as a test body reaches it through ``node.backend``: device tensors made by the body
    count as phase ``fill``, host copies as ``check``; everything else is the backend's own."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        with phase("fill"):
            return self._backend.to_device(host)

    def make_on_device(
        self, shape: Sequence[int], dtype: torch.dtype, write: Callable[[torch.Tensor], object]
    ) -> torch.Tensor:
        with phase("fill"):
            return self._backend.make_on_device(shape, dtype, write)

    def to_host(self, tensor: torch.Tensor) -> torch.Tensor:
        with phase("check"):
            return self._backend.to_host(tensor)


class Node:
    """One initialized LLMDataDist of this role, with what it registered and linked."""

    def __init__(
        self, kv: TestScope, backend: Backend, settings: Settings, cluster_id: int, device_id: int = 0
    ) -> None:
        self.kv = kv
        self.backend: Backend = _PhasedBackend(backend)
        self.api = backend.api
        self.settings = settings
        self.cluster_id = cluster_id
        self.device_id = device_id
        self.host_ip = host_ip(settings)
        self.listen: str | None = None
        self.dd: Any = None
        self.registered: list[Any] = []
        self.allocated: list[Any] = []
        self.comm_ids: list[int] = []
        self.clusters: dict[int, Any] = {}
        self.finalized = False

    # -- set-up -----------------------------------------------------------------------------------

    def free_port(self) -> int:
        """A free port on this node's host, from this role's own part of the range (:func:`free_port`)."""
        roles = self.kv.topology.roles
        return free_port(self.host_ip, roles.index(self.kv.me), len(roles))

    def init(self, options: dict[str, str], role: Any) -> None:
        with phase("init"):
            self.dd = self.api.LLMDataDist(role, self.cluster_id)
            self.dd.init(options)
        # No device IP here: only a rank table needs one (:meth:`link`), so hosts without hccn_tool
        # or device IPs still run the one-sided samples, as the vendor samples do.
        self.publish()

    def publish(self, key: str = "node") -> None:
        """Publish this node's addresses under ``key`` for this test's peers (:meth:`peer` reads them):
        cluster_id, host_ip, device_id (logical) and listen."""
        self.kv.publish(key, {**self._own_info(), "listen": self.listen})

    @property
    def cm(self) -> Any:
        """The CacheManager."""
        return self.dd.cache_manager

    def peer(self, role: str, key: str = "node") -> dict[str, Any]:
        """What ``role``'s node published: cluster_id, listen, host_ip, device_id (logical).

        ``--remote-host-ip`` overrides the address a peer reports, as the samples' flag does: with one
        IP every peer is dialled there; with several, the peer's own address must be one of them.
        """
        info: dict[str, Any] = dict(self.kv.fetch(role, key))
        remote = self.settings.remote_host_ips
        if not remote or info.get("host_ip") is None:
            return info
        if len(remote) > 1:
            if info["host_ip"] not in remote:
                raise RuntimeError(
                    f"{role} reports host {info['host_ip']}, which is not in --remote-host-ip "
                    f"{','.join(remote)}: list every peer host, or drop the option"
                )
            return info
        info["host_ip"] = remote[0]
        if info.get("listen"):
            info["listen"] = f"{remote[0]}:{info['listen'].rsplit(':', 1)[1]}"
        return info

    # -- tensors ----------------------------------------------------------------------------------

    def datatype(self, dtype: torch.dtype) -> Any:
        return getattr(self.api.DataType, TORCH_TO_DATATYPE[dtype])

    def tensors(
        self, count: int, shape: Sequence[int], dtype: torch.dtype, side: str | None, first_index: int = 0
    ) -> list[torch.Tensor]:
        """``count`` device tensors: the seeded pattern of ``side`` (``None``: zeros)."""
        with phase("fill"):
            return self._tensors(count, shape, dtype, side, first_index)

    def _tensors(
        self, count: int, shape: Sequence[int], dtype: torch.dtype, side: str | None, first_index: int
    ) -> list[torch.Tensor]:
        def writer(index: int) -> Callable[[torch.Tensor], object]:
            if side is None:
                return torch.Tensor.zero_
            return partial(patterns.fill, seed=self.kv.seed, tensor_index=index, side=side)

        return [self.backend.make_on_device(shape, dtype, writer(first_index + i)) for i in range(count)]

    def expected(
        self, count: int, shape: Sequence[int], dtype: torch.dtype, side: str | None, first_index: int = 0
    ) -> list[torch.Tensor]:
        """The host tensors :meth:`tensors` fills, for building expected states."""
        with phase("fill"):
            return self._expected(count, shape, dtype, side, first_index)

    def _expected(
        self, count: int, shape: Sequence[int], dtype: torch.dtype, side: str | None, first_index: int
    ) -> list[torch.Tensor]:
        if side is None:
            return [torch.zeros(list(shape), dtype=dtype) for _ in range(count)]
        return [self._pattern(shape, dtype, first_index + i, side) for i in range(count)]

    @staticmethod
    def _zeros(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
        """A zeroed host tensor in reused memory (the pages of the previous expected tensor)."""
        return reused_memory.empty(math.prod(shape) * dtype.itemsize).zero_().view(dtype).view(list(shape))

    def _pattern(
        self, shape: Sequence[int], dtype: torch.dtype, index: int, side: str, skip_rows: Collection[int] = ()
    ) -> torch.Tensor:
        """Tensor ``index``'s pattern of ``side`` in this test (what :meth:`tensors` fills it with), rows
        ``skip_rows`` left unwritten (see :func:`kvtest.patterns.pattern`)."""
        return patterns.pattern(shape, dtype, seed=self.kv.seed, tensor_index=index, side=side,
                                skip_rows=skip_rows)

    def expected_after_rows(
        self,
        count: int,
        shape: Sequence[int],
        dtype: torch.dtype,
        *,
        base: str | None,
        source: str,
        src_rows: Sequence[int],
        dst_rows: Sequence[int],
        moved: Mapping[int, int] | None = None,
    ) -> patterns.LazyTensors:
        """The expected state of a cache filled with ``base``'s pattern (``None``: zeros) after rows
        ``src_rows`` of ``source``'s pattern landed in rows ``dst_rows``: of every tensor, from the same
        tensor index of the source, or of the tensors in ``moved`` only, from tensor ``moved[i]`` of the
        source. What ``[with_rows(b, s, ...) for b, s in zip(expected(base), expected(source))]`` holds,
        made one tensor at a time when :meth:`check` reads it (a cache's worth of fresh memory less per
        check). A source row is the pattern's bytes at that row of the *destination's* row size, so
        ``src_rows`` may name rows past the destination's own (a slot of a larger source cache): a
        pattern's bytes do not depend on its shape."""
        sources = None if moved is None else dict(moved)
        dst_set = frozenset(dst_rows)

        def make(index: int) -> torch.Tensor:
            with phase("expect"):
                # the base's pattern, where a source row lands only when none does (written just below)
                skip = dst_set if sources is None or index in sources else frozenset()
                if base is None:
                    own = self._zeros(shape, dtype)
                else:
                    own = self._pattern(shape, dtype, index, base, skip)
                if not skip:
                    return own
                # only the moved rows of the source's pattern are made, straight into ``own``
                source_index = index if sources is None else sources[index]
                patterns.write_rows(own, seed=self.kv.seed, tensor_index=source_index, side=source,
                                    src_rows=src_rows, dst_rows=dst_rows)
                return own

        return patterns.LazyTensors(count, make)

    def expected_lazily(
        self,
        count: int,
        shape: Sequence[int],
        dtype: torch.dtype,
        side: str,
        first_index: int = 0,
        *,
        replaced: Mapping[int, tuple[str, int]] | None = None,
    ) -> patterns.LazyTensors:
        """:meth:`expected`, made one tensor at a time when :meth:`check` reads it; tensor ``i`` in
        ``replaced`` is instead the pattern of tensor ``replaced[i][1]`` of side ``replaced[i][0]`` (a
        whole tensor that arrived from another process)."""
        whole = dict(replaced or {})

        def make(index: int) -> torch.Tensor:
            with phase("expect"):
                if index in whole:
                    return self._pattern(shape, dtype, whole[index][1], whole[index][0])
                return self._pattern(shape, dtype, first_index + index, side)

        return patterns.LazyTensors(count, make)

    def pool_views(self, cache: Any, contents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Views of a pool-allocated cache's memory, filled with ``contents``: device memory through the
        backend (create_npu_tensors on npu), host memory (a ``Placement.HOST`` cache from
        ``host_mem_pool_cfg``, pinned host memory on npu) as CPU tensors."""
        hosts = iter(contents)  # read once each: a LazyTensors makes each tensor once, in turn
        first = next(hosts)
        shape, dtype = list(first.shape), first.dtype
        if cache.cache_desc.placement == self.api.Placement.HOST:
            views = host_tensors_at(shape, dtype, cache.tensor_addrs)
        else:
            views = self.backend.tensors_at(shape, dtype, cache.tensor_addrs)
        with phase("fill"), torch.no_grad():
            views[0].copy_(first)
            del first
            for view, host in zip(views[1:], hosts):
                view.copy_(host)
        return views

    def host(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        with phase("check"):
            return [self.backend.to_host(t) for t in tensors]

    def check(
        self,
        expected: Sequence[torch.Tensor],
        actual: Sequence[torch.Tensor],
        *,
        name: str,
        tensors_per_layer: int = 2,
    ) -> None:
        """Byte-for-byte: raise :class:`kvtest.patterns.KVMismatch` naming tensor, layer and block.

        The checker reads host tensors in place and copies device tensors to the host one at a time,
        so a check costs no copy of the whole cache (on sim, none at all).
        """
        self.kv.step(f"check {name}")
        with phase("check"):
            patterns.check_all(
                expected,  # a LazyTensors stays lazy: one expected tensor in memory at a time
                list(actual),
                name=f"{self.kv.me} {name}",
                tensors_per_layer=tensors_per_layer,
            )

    def same(self, expected: Sequence[torch.Tensor], actual: Sequence[torch.Tensor]) -> bool:
        """Whether ``actual`` holds exactly ``expected``'s bytes, tensor for tensor (no report: for a
        test that tells which of two outcomes it saw before it checks that one)."""
        with phase("check"):
            return len(expected) == len(actual) and all(
                patterns.same_bytes(e, self.backend.to_host(a)) for e, a in zip(expected, actual)
            )

    @contextmanager
    def measure(self, api: str, nbytes: int) -> Iterator[None]:
        """Time one transfer call; the figure goes to JUnit properties and the results file."""
        self.kv.step(api)
        with self.kv.metrics.measure(api, nbytes):
            yield

    def measure_repeats(self, api: str, nbytes: int, call: Callable[[], object], repeats: int = 1) -> None:
        """Time ``repeats`` calls of ``call``, each a transfer of ``nbytes`` through ``api``.

        With more than one, an untimed warm-up call comes first: first-use costs (connection,
        transfer handles) are not bandwidth. The samples are what ``kvtest compare`` gates on. Only
        for transfers that may be repeated: a blocks-cache key is not released by a pull (the real
        ``v2/cache_manager.py`` releases a cache only through its ``CacheKey`` references).
        """
        if repeats > 1:
            self.kv.step(f"{api} warm-up")
            with phase("transfer"):
                call()
        for _ in range(repeats):
            with self.measure(api, nbytes):
                call()

    # -- caches -----------------------------------------------------------------------------------

    def register_cache(
        self, desc: Any, tensors: Sequence[torch.Tensor], keys: Sequence[Any] = (), **kwargs: Any
    ) -> Any:
        self.kv.step("register_cache")
        with phase("register"):
            cache = self.cm.register_cache(desc, [t.data_ptr() for t in tensors], list(keys), **kwargs)
        self.registered.append(cache)
        return cache

    def register_blocks_cache(
        self, desc: Any, tensors: Sequence[torch.Tensor], key: Any = None, **kwargs: Any
    ) -> Any:
        self.kv.step("register_blocks_cache")
        with phase("register"):
            cache = self.cm.register_blocks_cache(desc, [t.data_ptr() for t in tensors], key, **kwargs)
        self.registered.append(cache)
        return cache

    def allocate_cache(self, desc: Any, keys: Sequence[Any] = ()) -> Any:
        with phase("register"):
            cache = self.cm.allocate_cache(desc, list(keys))
        self.allocated.append(cache)
        return cache

    def allocate_blocks_cache(self, desc: Any, key: Any = None) -> Any:
        self.kv.step("allocate_blocks_cache")
        with phase("register"):
            cache = self.cm.allocate_blocks_cache(desc, key)
        self.allocated.append(cache)
        return cache

    def unregister(self, cache: Any) -> None:
        self.registered.remove(cache)
        self.kv.step("unregister_cache")
        with phase("teardown"):
            self.cm.unregister_cache(cache.cache_id)

    def deallocate(self, cache: Any) -> None:
        """``deallocate_blocks_cache`` or ``deallocate_cache``, as the cache was allocated."""
        self.allocated.remove(cache)
        self.kv.step("deallocate_cache")
        with phase("teardown"):
            if cache.is_blocks_cache:
                self.cm.deallocate_blocks_cache(cache)
            else:
                self.cm.deallocate_cache(cache)

    # -- links ------------------------------------------------------------------------------------

    def cluster_info(self, role: str, *, local_port: int | None = None, key: str = "node") -> Any:
        """The LLMClusterInfo that reaches ``role``'s listener (as published under ``key``), as the
        samples build it."""
        peer = self.peer(role, key)
        if not peer["listen"]:
            why = "its datadist was made without listen=True" if key == "node" else f"as of {key!r}"
            raise RuntimeError(f"{role} does not listen ({why})")
        host, port = peer["listen"].rsplit(":", 1)
        info = self.api.LLMClusterInfo()
        info.remote_cluster_id = peer["cluster_id"]
        own_port = (
            local_port if local_port is not None else int(self.listen.rsplit(":", 1)[1]) if self.listen else 0
        )
        info.append_local_ip_info(self.host_ip, own_port)
        info.append_remote_ip_info(host, int(port))
        return info

    def link_clusters(
        self, roles: Sequence[str], timeout_ms: int = 5000, *, key: str = "node"
    ) -> tuple[Any, list[Any]]:
        """One-sided link to every role in ``roles``, at the addresses they published under ``key``;
        return (code, per-cluster codes) as the API does."""
        clusters = [self.cluster_info(role, key=key) for role in roles]
        self.kv.step("link_clusters")
        with phase("link"):
            ret, codes = self.dd.link_clusters(clusters, timeout_ms)
        for info, code in zip(clusters, codes):
            if code == self.api.LLMStatusCode.LLM_SUCCESS:
                self.clusters[info.remote_cluster_id] = info
        return ret, list(codes)

    def must_link_clusters(self, roles: Sequence[str], timeout_ms: int = 5000) -> None:
        ret, codes = self.link_clusters(roles, timeout_ms)
        if ret != self.api.LLMStatusCode.LLM_SUCCESS:
            raise AssertionError(f"link_clusters to {', '.join(roles)} failed: {ret}, per cluster {codes}")

    def unlink_clusters(self, roles: Sequence[str], *, force: bool = False, timeout_ms: int = 5000) -> None:
        """Tear down the links to ``roles``; non-success raises, as the samples' ``unlink failed``."""
        ids = [self.peer(role)["cluster_id"] for role in roles]
        infos = [self.clusters.pop(i, None) or self._bare_info(i, role) for i, role in zip(ids, roles)]
        self.kv.step("unlink_clusters")
        with phase("teardown"):
            ret, codes = self.dd.unlink_clusters(infos, timeout_ms, force=force)
        if ret != self.api.LLMStatusCode.LLM_SUCCESS:
            raise AssertionError(
                f"unlink_clusters from {', '.join(roles)} failed: {ret}, per cluster {codes}"
            )

    def _bare_info(self, cluster_id: int, role: str) -> Any:
        info = self.api.LLMClusterInfo()
        info.remote_cluster_id = cluster_id
        listen = self.peer(role).get("listen")
        if listen:
            host, port = listen.rsplit(":", 1)
            info.append_remote_ip_info(host, int(port))
        return info

    def forget_links_to(self, roles: Sequence[str]) -> None:
        """The peer tore the link down (a non-forced unlink from the client): nothing left to unlink."""
        for role in roles:
            self.clusters.pop(self.peer(role)["cluster_id"], None)

    def link(self, roles: Sequence[str], comm_name: str | None = None) -> int:
        with phase("link"):
            return self._link(roles, comm_name)

    def _link(self, roles: Sequence[str], comm_name: str | None) -> int:
        """Two-sided link (``link`` + poll ``query_register_mem_status``) with every role in ``roles``.

        Every member calls it; the rank table comes from what each member published: its host IP
        (``"node"``), and here its *physical* device id and device IP (``hccn_tool``), looked up only
        now because only a rank table needs them.
        """
        members = sorted({self.kv.me, *roles}, key=lambda r: (r[0] != "p", r))
        self.kv.step("rank table")
        self._refuse_loopback(self.host_ip, self._host_ip_source())
        own_device = self.backend.physical_id(self.device_id)
        own = {
            "device_id": own_device,
            "device_ip": self.backend.device_ip(self.device_id),
        }
        self.kv.publish(RANK_DEVICE, own)
        infos = []
        for member in members:
            if member == self.kv.me:
                infos.append({**self._own_info(), **own})
                continue
            info = {**self.peer(member), **self.kv.fetch(member, RANK_DEVICE)}
            if self.settings.remote_host_ips:
                self._refuse_loopback(info["host_ip"], f"--remote-host-ip for {member}")
            infos.append(info)
        table = rank_table_json(
            [(i["host_ip"], i["device_id"], i["device_ip"], rank) for rank, i in enumerate(infos)]
        )
        rank_info = cluster_rank_info([i["cluster_id"] for i in infos])
        name = comm_name or f"kvtest-{self.kv.seq}-{'-'.join(members)}"
        self.kv.step("link")
        peers = [LinkPeer(m, i["host_ip"], i["device_id"], i["device_ip"]) for m, i in zip(members, infos)]
        try:
            comm_id = self.dd.link(name, rank_info, table)
        except Exception as exc:
            self._blame_device_network(own_device, peers, exc)
            raise
        self.comm_ids.append(comm_id)
        deadline = time.monotonic() + self.kv.timeout
        status = self.api.RegisterMemStatus
        checked = time.monotonic()
        pause = LINK_POLL_FIRST_S
        while True:
            state = self.dd.query_register_mem_status(comm_id)
            if state == status.OK:
                return int(comm_id)
            if time.monotonic() - checked > 0.2:  # a peer that failed or died: stop polling now
                checked = time.monotonic()
                self.kv.check_peers()
            failed: Exception | None = None
            if state == status.FAILED:
                failed = RuntimeError("link failed")  # as the samples say
            elif time.monotonic() > deadline:
                waited = f"{self.kv.timeout:g}s"
                failed = TimeoutError(f"query_register_mem_status({comm_id}) not OK after {waited}")
            if failed is not None:
                self._blame_device_network(own_device, peers, failed)
                raise failed
            time.sleep(pause)  # a peer a few ms behind is seen at once; a slow one costs 10 ms polls
            pause = min(pause * 2, LINK_POLL_MAX_S)

    def _blame_device_network(self, own_device: int, members: Sequence[LinkPeer], exc: Exception) -> None:
        """On npu, raise a :class:`~kvtest.host.linkcheck.DeviceNetworkProblem` (an environment failure)
        from ``exc`` when a device-network check finds why the link failed; else return."""
        if self.backend.name != "npu":
            return
        peers = [m for m in members if m.role != self.kv.me]
        problem = explain_link_failure(own_device, self.host_ip, peers)
        if problem is not None:
            raise type(problem)(f"link failed ({type(exc).__name__}: {exc}), and {problem}") from exc

    def unlink(self, comm_id: int) -> None:
        self.comm_ids.remove(comm_id)
        self.kv.step("unlink")
        with phase("teardown"):
            self.dd.unlink(comm_id)

    def _own_info(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster_id, "host_ip": self.host_ip, "device_id": self.device_id}

    def _host_ip_source(self) -> str:
        if self.settings.local_host_ip:
            return self.settings.sources.get("local_host_ip", "the command line (--local-host-ip)")
        rdv = self.settings.rendezvous
        if rdv is not None and rdv.scheme == "tcp":
            return f"the address this host reaches the rendezvous {rdv} from"
        return "the default, as there is no TCP rendezvous to take it from"

    def _refuse_loopback(self, address: str, source: str) -> None:
        """On npu a rank table names hosts by a NIC address, as every sample's does; never loopback."""
        if self.backend.name != "npu" or not _is_loopback(address):
            return
        raise pytest.UsageError(
            f"kvtest: host IP {address} from {source} is a loopback address, which cannot go into the "
            "rank table of a two-sided link on npu (the samples always give a NIC address): pass "
            "--local-host-ip <this host's NIC address> (and --remote-host-ip, if any, with NIC addresses)"
        )

    # -- teardown ---------------------------------------------------------------------------------

    def finalize(self) -> None:
        if self.dd is not None and not self.finalized:
            self.finalized = True
            try:
                self.kv.step("finalize")
            finally:
                with phase("teardown"):
                    self.dd.finalize()

    def release(self) -> list[str]:
        """Release what the body left, in the samples' order; return what failed."""
        with phase("teardown"):
            return self._release()

    def _release(self) -> list[str]:
        problems: list[str] = []

        def attempt(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Exception as exc:  # each step runs even when an earlier one failed
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        if self.dd is None or self.finalized:
            return problems
        for comm_id in list(self.comm_ids):
            attempt(f"unlink({comm_id})", self.dd.unlink, comm_id)
        if self.clusters:
            attempt(
                "unlink_clusters(force=True)",
                self.dd.unlink_clusters,
                list(self.clusters.values()),
                1000,
                force=True,
            )
        for cache in list(self.registered):
            attempt(f"unregister_cache({cache.cache_id})", self.cm.unregister_cache, cache.cache_id)
        for cache in list(self.allocated):
            if cache.is_blocks_cache:
                attempt(f"deallocate_blocks_cache({cache.cache_id})", self.cm.deallocate_blocks_cache, cache)
            else:
                attempt(f"deallocate_cache({cache.cache_id})", self.cm.deallocate_cache, cache)
        attempt("finalize()", self.finalize)
        return problems

    # -- switch_role onto a fresh listen port (appended) ----------------------------------------

    def switch_role(self, role: Any, *, listen: bool = False, key: str = "node after switch_role") -> None:
        """``switch_role(role)`` as the switch_role sample calls it.

        With ``listen`` the process becomes a server on a fresh free port (the options carry
        ``llm.listenIpInfo``, built with ``LLMConfig`` as the sample does); without it a client whose
        listen port closes. ``node.listen`` follows, and the node's addresses are re-published under
        ``key`` (what it published under ``"node"`` at init stays as it was): peers link to the new address
        with :meth:`link_clusters_to`.
        """
        options = None
        address = None
        if listen:
            address = f"{self.host_ip}:{self.free_port()}"
            config = self.api.LLMConfig()
            config.listen_ip_info = address
            options = config.generate_options()
        self.kv.step("switch_role")
        with phase("link"):
            self.dd.switch_role(role, options)
        self.listen = address
        self.publish(key)

    def link_clusters_to(
        self, roles: Sequence[str], *, key: str = "node after switch_role", timeout_ms: int = 5000
    ) -> tuple[Any, list[Any]]:
        """:meth:`link_clusters` to the addresses ``roles`` re-published under ``key``."""
        return self.link_clusters(roles, timeout_ms, key=key)
