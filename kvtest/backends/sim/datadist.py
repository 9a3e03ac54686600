"""``LLMDataDist``: lifecycle, the two link models, and role switching.

One initialized instance per process. Links are recorded in the control store as
``links/<cluster>`` = ``{peer: [roles]}`` where a role is ``client`` / ``server`` (one-sided, one entry
per direction, so two processes may each be the other's client) or ``comm`` (two-sided).
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kvtest.backends.sim import context as sim_context
from kvtest.backends.sim import control, device
from kvtest.backends.sim.cache import RegisterMemStatus
from kvtest.backends.sim.checks import (
    check_dict,
    check_int32,
    check_isinstance,
    check_type,
    check_uint32,
    check_uint64,
)
from kvtest.backends.sim.cluster import LLMClusterInfo, int_to_ip
from kvtest.backends.sim.config import ROLE_OPTION, LLMRole, parse_listen_ip_info, pool_size
from kvtest.backends.sim.listener import Listener, connectable, probe
from kvtest.backends.sim.pool import MemoryPool
from kvtest.backends.sim.seam import FaultSeam
from kvtest.backends.sim.status import (
    LLMException,
    LLMStatusCode,
    native_error,
    raise_if_false,
    raise_if_true,
    raise_param_invalid,
)
from kvtest.backends.sim.transport import WIREUP_LIMIT_S, TransferError, Transport, next_version

if TYPE_CHECKING:
    from kvtest.backends.sim.cache_manager import CacheManager

DEFAULT_SYNC_KV_TIMEOUT_MS = 1000
DEFAULT_COMM_LINK_TIMEOUT_MS = 30000

_live_lock = threading.Lock()
_agent_seq = itertools.count(1)


@dataclass
class _CommLink:
    name: str
    members: dict[int, int]
    deadline: float
    status: RegisterMemStatus = RegisterMemStatus.PREPARING
    peers: list[int] = field(default_factory=list)


def _require_init(instance: LLMDataDist) -> None:
    if not instance._initialized:
        raise RuntimeError("llm datadist is not initialized")


class LLMDataDist:
    """A process's endpoint: ``init``, link, transfer through ``cache_manager``, ``finalize``."""

    #: the initialized instance of this process (the real package refuses a second one)
    llm_engine_instance: LLMDataDist | None = None

    def __init__(self, role: LLMRole, cluster_id: int) -> None:
        check_isinstance("role", role, LLMRole)
        self._role = role
        self._cluster_id = check_uint64("cluster_id", cluster_id)
        self._initialized = False
        self._options: dict[str, str] = {}
        self._cm_enabled = False
        self._remote_accessible = False
        self._sync_timeout_ms = DEFAULT_SYNC_KV_TIMEOUT_MS
        self._link_timeout_ms = DEFAULT_COMM_LINK_TIMEOUT_MS
        self._linked = False
        self._plane: control.ControlPlane | None = None
        self._transport: Transport | None = None
        #: fault injection, built from the context's faults at init
        self._seam = FaultSeam()
        self._listener: Listener | None = None
        self._pools: dict[str, MemoryPool] = {}
        self._pool_regs: list[int] = []
        self._agent_version = 0
        self._comm_links: dict[int, _CommLink] = {}
        #: peer clusters of comm domains this process unlinked (a later link to one is a relink)
        self._unlinked_peers: set[int] = set()
        self._comm_ids = itertools.count(1)
        self._cache_manager: CacheManager | None = None
        self._hixl = False
        self._fixed: frozenset[str] = frozenset()
        self._device_tokens: list[int] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def init(self, options: dict[str, str]) -> None:
        """Start the endpoint; a second call on the same object does nothing."""
        if self._initialized:
            return
        with _live_lock:
            # the real package's order and words (hicann/hixl v2/llm_datadist.py ``init``,
            # ``_check_flow_graph_max_size``, ``_setup_engine_option``)
            raise_if_false(
                LLMDataDist.llm_engine_instance is None,
                "Cannot init multiple LLMDataDists",
                status_code=LLMStatusCode.LLM_FAILED,
            )
            check_isinstance("options", options, dict)
            options = _engine_options(self._role, options)
            if options.get("llm.EnableCacheManager") != "1":
                # the real package imports its v1 engine (llm_datadist_v1) here, which it does not ship
                raise ModuleNotFoundError("No module named 'llm_datadist_v1'", name="llm_datadist_v1")
            for k, v in options.items():
                check_type("options key", k, str)
                check_type("options value", v, str)
            self._start(options)
            LLMDataDist.llm_engine_instance = self
        self._initialized = True
        self._seam.enter("init")

    def _init_error(self, options: dict[str, str], why: str) -> LLMException:
        return native_error(
            "LLMDataDist.init",
            LLMStatusCode.LLM_FAILED,
            f"Failed to initialize llm datadist ({why}), options = {options}",
        )

    def _start(self, options: dict[str, str]) -> None:
        try:
            context = sim_context.current()  # the one place an instance gets what it runs with
        except (control.ControlPlaneError, sim_context.SimConfigError) as exc:
            raise self._init_error(options, str(exc)) from None
        if context is None:
            raise self._init_error(options, control.NOT_CONFIGURED)
        plane = context.plane
        cm = options.get("llm.EnableCacheManager") == "1"
        remote = options.get("llm.EnableRemoteCacheAccessible") == "1"
        listen = options.get("llm.listenIpInfo")
        timeout = options.get("llm.SyncKvCacheWaitTime")
        if timeout is not None:
            if not timeout.isdigit() or int(timeout) <= 0:
                raise_param_invalid(f"llm.SyncKvCacheWaitTime should be a positive int, but got {timeout!r}.")
            self._sync_timeout_ms = int(timeout)
        link_time = options.get("llm.LinkTotalTime")
        if link_time is not None and link_time.isdigit() and int(link_time) > 0:
            self._link_timeout_ms = int(link_time)
        pools = {}
        for option, placement in (("llm.MemPoolConfig", "DEVICE"), ("llm.HostMemPoolConfig", "HOST")):
            if option in options:
                pools[placement] = MemoryPool(pool_size(option, options[option]))
        self._seam = FaultSeam(context.faults, plane.role)
        self._fixed = context.fixed
        listener = None
        if listen is not None:
            host, port = options["llm.ListenIp"], int(options["llm.ListenPort"])
            try:
                listener = Listener(host, port, self._cluster_id)
            except Exception as exc:  # noqa: BLE001 - the native init reports any listen failure
                raise self._init_error(options, f"cannot listen on {listen}: {exc}") from None
        name = f"kvtest-sim/{plane.namespace}/{plane.role}/{os.getpid()}/{next(_agent_seq)}"
        try:
            transport = Transport(name)
        except Exception as exc:
            if listener is not None:
                listener.close()
            raise self._init_error(options, f"nixl agent failed: {exc!r}") from exc
        self._plane, self._transport, self._listener = plane, transport, listener
        self._options, self._cm_enabled, self._remote_accessible = options, cm, remote
        self._pools = pools
        self._hixl = options.get("llm.TransferBackend") == "hixl"
        self._pool_regs = [transport.register([(p.base, p.size)]) for p in pools.values()]
        if "DEVICE" in pools:
            self._device_tokens = [device.add(pools["DEVICE"].base, pools["DEVICE"].size)]
        self._publish_agent()
        from kvtest.backends.sim.cache_manager import CacheManager

        self._cache_manager = CacheManager(_Endpoint(self))

    def finalize(self) -> None:
        """Release everything; peers see this cluster as gone. A second call does nothing."""
        if not self._initialized:
            return
        self._seam.enter("finalize")
        self._initialized = False
        try:
            if self._cache_manager is not None:
                self._cache_manager.release_all()
            if self._listener is not None:
                self._listener.close()
            plane = self._plane
            if plane is not None:
                record = plane.fetch(plane.key("agent", self._cluster_id))
                if record is not None:
                    plane.release(plane.key("agent", self._cluster_id), record)
                plane.put(plane.key("links", self._cluster_id), {})
            if self._transport is not None:
                self._transport.close()
        finally:
            for token in self._device_tokens:
                device.remove(token)
            self._device_tokens = []
            self._listener = None
            self._transport = None
            self._cache_manager = None
            with _live_lock:
                if LLMDataDist.llm_engine_instance is self:
                    LLMDataDist.llm_engine_instance = None
        # after the release, so that a failing finalize still leaves the process able to init again
        self._seam.released("finalize")

    @property
    def cluster_id(self) -> int:
        return self._cluster_id

    @property
    def cache_manager(self) -> CacheManager:
        _require_init(self)
        self._require_cm("cache_manager")
        assert self._cache_manager is not None
        return self._cache_manager

    @property
    def kv_cache_manager(self) -> Any:
        """The v1 API: an initialized instance always has the cache manager (v2), so this refuses."""
        _require_init(self)
        raise_param_invalid("kv_cache_manager is not supported when llm.EnableCacheManager is configured.")

    def check_link_status(self, remote_cluster_id: int) -> None:
        """The v1 API: an initialized instance always has the cache manager (v2), so this refuses."""
        _require_init(self)
        raise_param_invalid("check_link_status is not supported when llm.EnableCacheManager is configured.")

    @staticmethod
    def _role_to_str(role: LLMRole) -> str:
        return ROLE_OPTION[role]

    # -- internals shared with the cache manager ------------------------------------------------
    def _require_cm(self, api: str) -> None:
        if not self._cm_enabled:
            raise_param_invalid(f"{api} is not supported when llm.EnableCacheManager is not configured.")

    def _ctx(self) -> tuple[control.ControlPlane, Transport]:
        assert self._plane is not None and self._transport is not None
        return self._plane, self._transport

    def _publish_agent(self) -> None:
        plane, transport = self._ctx()
        self._agent_version = next_version()
        record = {
            "agent": transport.name,
            "meta": control.encode_bytes(transport.metadata()),
            "probe": transport.probe_address,
            "version": self._agent_version,
            "role": plane.role,
            "pid": os.getpid(),
        }
        plane.put(plane.key("agent", self._cluster_id), record)

    def _links(self) -> dict[str, list[str]]:
        plane, _ = self._ctx()
        links = plane.fetch(plane.key("links", self._cluster_id))
        return dict(links) if links else {}

    def _change_links(
        self, owner: int, peer: int, add: str | None = None, remove: tuple[str, ...] = ()
    ) -> None:
        plane, _ = self._ctx()

        def change(old: Any) -> dict[str, list[str]]:
            table: dict[str, list[str]] = dict(old) if old else {}
            roles = [r for r in table.get(str(peer), []) if r not in remove]
            if add is not None and add not in roles:
                roles.append(add)
            if roles:
                table[str(peer)] = sorted(roles)
            else:
                table.pop(str(peer), None)
            return table

        plane.update(plane.key("links", owner), change)

    def _reach(self, cluster_id: int, deadline: float) -> LLMStatusCode:
        """Load the peer's published agent and set the connection to it up by ``deadline``
        (``time.monotonic``), as the real link does before it returns: ``EntityCommInfo::Initialize`` ends
        in ``HcclCommPrepare`` within the link's timeout, whose HCCL_E_TIMEOUT is LLM_TIMEOUT (hicann/hixl
        src/llm_datadist/link_mgr/comm_entity.cc ``PrepareHcclComm``, comm_adapter/comm_adapter.cc
        ``ConvertCommErrorToStatus``). LLM_LINK_FAILED when the agent is not there or cannot be loaded."""
        plane, transport = self._ctx()
        record = plane.fetch(plane.key("agent", cluster_id))
        if record is None:
            return LLMStatusCode.LLM_LINK_FAILED
        try:
            meta = control.decode_bytes(record["meta"])
            transport.load_peer(record["agent"], meta, int(record["version"]), record.get("probe"))
        except Exception:  # noqa: BLE001 - an unreachable peer fails the link with a code
            return LLMStatusCode.LLM_LINK_FAILED
        try:
            transport.connect(str(record["agent"]), max(deadline - time.monotonic(), 0.001))
        except TransferError as exc:
            return exc.code
        return LLMStatusCode.LLM_SUCCESS

    # -- two-sided link (comm domain) -----------------------------------------------------------
    def link(self, comm_name: str, cluster_rank_info: dict[int, int], rank_table: str) -> int:
        """Join comm domain ``comm_name`` with every cluster in ``cluster_rank_info``; return its comm id.

        Every member calls it at about the same time; poll :meth:`query_register_mem_status` until OK.
        """
        _require_init(self)
        self._require_cm("link")
        self._seam.enter("link")
        # the Python layer's checks, in its order and words (hicann/hixl v2/llm_datadist.py ``link``)
        check_isinstance("comm_name", comm_name, str, allow_none=False)
        raise_if_true(len(comm_name) == 0, "comm_name can not be empty")
        raise_if_false(len(comm_name) < 128, "comm_name length should be smaller than 128.")
        check_isinstance("cluster_rank_info", cluster_rank_info, dict)
        check_dict("cluster_rank_info", cluster_rank_info, int, int)
        raise_if_false(len(cluster_rank_info) <= 4, "cluster_rank_info size can not be greater than 4.")
        for cid, rank in cluster_rank_info.items():
            check_uint64("cluster_rank_info key", cid)
            check_uint32("cluster_rank_info value", rank)
        check_isinstance("rank_table", rank_table, str)
        ranks = list(cluster_rank_info.values())
        raise_if_false(len(ranks) > 1, "cluster num must be bigger than 1.")
        raise_if_false(ranks == sorted(ranks), "rank in cluster_rank_info must be ordered")
        # below: what the native Link refuses (details worded by the sim; see docs/sim.md)
        details = f"cluster_rank_info = {cluster_rank_info}"
        if self._hixl:  # HixlTransferEngine::Link (src/llm_datadist/transfer_engine/hixl_transfer_engine.cc)
            raise native_error("link", LLMStatusCode.LLM_FEATURE_NOT_ENABLED, details)
        if len(set(ranks)) != len(ranks) or self._cluster_id not in cluster_rank_info:
            raise native_error("link", LLMStatusCode.LLM_PARAM_INVALID, details)
        try:
            json.loads(rank_table)
        except json.JSONDecodeError:
            raise native_error("link", LLMStatusCode.LLM_PARAM_INVALID, details) from None
        if self._seam.link_fails("link"):
            raise native_error("link", LLMStatusCode.LLM_LINK_FAILED, str(cluster_rank_info))
        plane, transport = self._ctx()
        members = {int(k): int(v) for k, v in cluster_rank_info.items()}
        plane.put(
            plane.key("comm", comm_name, self._cluster_id),
            {"agent": transport.name, "ranks": {str(k): v for k, v in members.items()}},
        )
        comm_id = next(self._comm_ids)
        deadline = time.monotonic() + self._link_timeout_ms / 1000
        self._comm_links[comm_id] = _CommLink(comm_name, members, deadline)
        self._linked = True
        return comm_id

    def query_register_mem_status(self, comm_id: int) -> RegisterMemStatus:
        """PREPARING until every member has joined, then OK; FAILED past the link timeout or on a mismatch."""
        _require_init(self)
        self._require_cm("query_register_mem_status")
        check_isinstance("comm_id", comm_id, int)
        check_uint64("comm_id", comm_id)
        if self._hixl:
            raise native_error(
                "query_register_mem_status", LLMStatusCode.LLM_FEATURE_NOT_ENABLED, f"comm_id = {comm_id}"
            )
        comm = self._comm_links.get(comm_id)
        if comm is None:  # CommLinkManager::QueryRegisterMemStatus (link_mgr/comm_link_manager.cc)
            raise native_error(
                "query_register_mem_status", LLMStatusCode.LLM_NOT_YET_LINK, f"comm_id = {comm_id}"
            )
        if comm.status != RegisterMemStatus.PREPARING:
            return comm.status
        plane, _ = self._ctx()
        others = [cid for cid in comm.members if cid != self._cluster_id]
        records = plane.fetch_many([plane.key("comm", comm.name, cid) for cid in others])
        expected = {str(k): v for k, v in comm.members.items()}
        if any(r is not None and r.get("ranks") != expected for r in records):
            comm.status = RegisterMemStatus.FAILED
        elif all(r is not None for r in records) and all(
            # a poll, not the whole link: at most WIREUP_LIMIT_S a try, so the caller's loop still sees
            # a peer that failed meanwhile; the next poll tries again until the link's deadline
            self._reach(cid, min(comm.deadline, time.monotonic() + WIREUP_LIMIT_S))
            == LLMStatusCode.LLM_SUCCESS
            for cid in others
        ):
            for cid in others:
                if not self._seam.link_reaped(relink=cid in self._unlinked_peers):
                    self._change_links(self._cluster_id, cid, add="comm")
            comm.peers = others
            comm.status = RegisterMemStatus.OK
        elif time.monotonic() >= comm.deadline:
            comm.status = RegisterMemStatus.FAILED
        return comm.status

    def unlink(self, comm_id: int) -> None:
        """Leave the comm domain ``comm_id``."""
        _require_init(self)
        self._require_cm("unlink")
        self._seam.enter("unlink")
        check_isinstance("comm_id", comm_id, int)
        check_uint64("comm_id", comm_id)
        if self._hixl:
            raise native_error("unlink", LLMStatusCode.LLM_FEATURE_NOT_ENABLED, f"comm_id = {comm_id}")
        comm = self._comm_links.pop(comm_id, None)
        if comm is None:  # CommLinkManager::Unlink (link_mgr/comm_link_manager.cc)
            raise native_error("unlink", LLMStatusCode.LLM_NOT_YET_LINK, f"comm_id = {comm_id}")
        for cid in comm.peers:
            self._change_links(self._cluster_id, cid, remove=("comm",))
        self._unlinked_peers.update(comm.peers)

    # -- one-sided link (client / server) -------------------------------------------------------
    def _check_clusters(self, clusters: Any, timeout: Any) -> int:
        check_int32("timeout", timeout)
        raise_if_false(timeout > 0, "Param timeout should be greater than 0.")
        check_isinstance("clusters", clusters, [list, tuple], LLMClusterInfo)
        return int(timeout)

    def link_clusters(
        self, clusters: list[LLMClusterInfo] | tuple[LLMClusterInfo, ...], timeout: int = 3000
    ) -> tuple[LLMStatusCode, list[LLMStatusCode]]:
        """Connect to each cluster's listener as its client; never raises on link failure.

        As hicann/hixl v2/llm_datadist.py ``link_clusters`` and, below it, link_mgr/llm_link_manager.cc
        (or transfer_engine/hixl_transfer_engine.cc with the hixl backend): no limit on the number of
        clusters, an empty list is LLM_PARAM_INVALID with no per-cluster codes.
        """
        _require_init(self)
        self._require_cm("link_clusters")
        self._seam.enter("link_clusters")
        timeout = self._check_clusters(clusters, timeout)
        for info in clusters:
            if not self._options.get("llm.LocalCommRes"):
                raise_if_false(
                    info.local_ip_info_list,
                    "local_ip_info_list is empty. Call append_local_ip_info to add local_ip_info "
                    "when local_comm_res option is unspecified or empty.",
                )
            check_uint64("remote_cluster_id", info.remote_cluster_id)
        if not clusters:
            return LLMStatusCode.LLM_PARAM_INVALID, []
        deadline = time.monotonic() + timeout / 1000
        codes = [self._seam.reported("link_clusters", self._link_one(info, deadline)) for info in clusters]
        return _overall(codes), codes

    def _link_one(self, info: LLMClusterInfo, deadline: float) -> LLMStatusCode:
        peer = int(info.remote_cluster_id or 0)  # checked as a uint64 before
        if self._seam.link_fails("link_clusters"):
            return LLMStatusCode.LLM_LINK_FAILED
        if len(info.remote_ip_info_list) != 1:  # "remote_ip_infos size != 1 is unsupported."
            return LLMStatusCode.LLM_PARAM_INVALID
        if not self._hixl and "client" in self._links().get(str(peer), []):
            return LLMStatusCode.LLM_ALREADY_LINK
        ip, port = info.remote_ip_info_list[0]
        answered, _why = probe(int_to_ip(ip), port, deadline)
        if answered != peer:
            return LLMStatusCode.LLM_LINK_FAILED
        reached = self._reach(peer, deadline)
        if reached != LLMStatusCode.LLM_SUCCESS:
            return reached
        self._change_links(self._cluster_id, peer, add="client")
        if not self._hixl:  # a HIXL link is an entity on the client only
            self._change_links(peer, self._cluster_id, add="server")
        return LLMStatusCode.LLM_SUCCESS

    def unlink_clusters(
        self,
        clusters: list[LLMClusterInfo] | tuple[LLMClusterInfo, ...],
        timeout: int = 3000,
        force: bool = False,
    ) -> tuple[LLMStatusCode, list[LLMStatusCode]]:
        """Tear links down: non-forced ends both sides of the link, forced only the local end.

        As link_mgr/link_msg_handler.cc ``UnlinkCluster``: a non-forced unlink needs exactly one
        remote ip (LLM_PARAM_INVALID otherwise) and a reachable peer (LLM_UNLINK_FAILED otherwise);
        a cluster that is not linked unlinks with LLM_SUCCESS. With the hixl backend an unlink is
        local whatever ``force`` says (hixl_transfer_engine.cc).
        """
        _require_init(self)
        self._require_cm("unlink_clusters")
        self._seam.enter("unlink_clusters")
        timeout = self._check_clusters(clusters, timeout)
        check_isinstance("force", force, bool)
        for info in clusters:
            check_uint64("remote_cluster_id", info.remote_cluster_id)
        if not clusters:
            return LLMStatusCode.LLM_PARAM_INVALID, []
        deadline = time.monotonic() + timeout / 1000
        codes = [self._unlink_one(info, force, deadline) for info in clusters]
        return _overall(codes), codes

    def _unlink_one(self, info: LLMClusterInfo, force: bool, deadline: float) -> LLMStatusCode:
        peer = int(info.remote_cluster_id or 0)  # checked as a uint64 before
        if self._hixl:
            self._change_links(self._cluster_id, peer, remove=("client",))
            return LLMStatusCode.LLM_SUCCESS
        if force:
            self._change_links(self._cluster_id, peer, remove=("client", "server", "comm"))
            return LLMStatusCode.LLM_SUCCESS
        if len(info.remote_ip_info_list) != 1:  # "When force_flag=false, remote_ip_infos size != 1 ..."
            return LLMStatusCode.LLM_PARAM_INVALID
        ip, port = info.remote_ip_info_list[0]
        if not connectable(int_to_ip(ip), port, deadline):
            return LLMStatusCode.LLM_UNLINK_FAILED
        roles = self._links().get(str(peer), [])
        mine = "client" if "client" in roles else "server"
        theirs = "server" if mine == "client" else "client"
        self._change_links(self._cluster_id, peer, remove=(mine,))
        self._change_links(peer, self._cluster_id, remove=(theirs,))
        return LLMStatusCode.LLM_SUCCESS

    def switch_role(self, role: LLMRole, switch_options: dict[str, str] | None = None) -> None:
        """Become ``role``; with ``llm.listenIpInfo`` a server on that ip:port, without it a client."""
        _require_init(self)
        self._require_cm("switch_role")
        self._seam.enter("switch_role")
        check_isinstance("role", role, LLMRole)
        check_isinstance("switch_options", switch_options, dict)
        options = dict(switch_options) if switch_options is not None else {}
        if "llm.listenIpInfo" in options:
            ip, port = parse_listen_ip_info(options["llm.listenIpInfo"])
            options["llm.ListenIp"] = ip
            options["llm.ListenPort"] = str(port)
        # the native failure is worded as the real package words it; the sim's reason is the cause
        details = f"Failed to switch role, role = {role}, options = {options}"
        try:
            self._switch_role(role, options)
        except LLMException as exc:
            raise native_error("switch_role", exc.status_code, details) from exc

    def _switch_role(self, role: LLMRole, options: dict[str, str]) -> None:
        if self._hixl:
            self._switch_role_hixl(role, options)
            return
        links = self._links()
        if links:
            raise native_error(
                "switch_role",
                LLMStatusCode.LLM_EXIST_LINK,
                f"links to clusters {sorted(int(c) for c in links)} still exist, unlink them first",
            )
        listen = options.get("llm.listenIpInfo")
        current = self._listener
        if listen is None:
            if current is not None:
                current.close()
            self._listener = None
        else:
            host, port = parse_listen_ip_info(listen)
            if current is None or (current.host, current.port) != (host, port):
                if current is not None:
                    current.close()
                self._listener = None
                try:
                    self._listener = Listener(host, port, self._cluster_id)
                except Exception as exc:  # noqa: BLE001 - reported as the native failure
                    raise native_error(
                        "switch_role", LLMStatusCode.LLM_FAILED, f"cannot listen on {listen}: {exc}"
                    ) from None
            self._options["llm.listenIpInfo"] = listen
        if listen is None:
            self._options.pop("llm.listenIpInfo", None)
        self._role = role
        self._options["llm.Role"] = ROLE_OPTION[role]

    def _switch_role_hixl(self, role: LLMRole, options: dict[str, str]) -> None:
        """HixlTransferEngine::SwitchRole: links may stay up; the listen address cannot change."""
        listen = options.get("llm.listenIpInfo")
        if listen is not None:
            host, port = parse_listen_ip_info(listen)
            current = self._listener
            if current is None or (current.host, current.port) != (host, port):
                raise native_error(
                    "switch_role",
                    LLMStatusCode.LLM_FEATURE_NOT_ENABLED,
                    f"Failed to switch role, role = {role}, listen ip info {listen} is not the one given "
                    f"at init ({self._options.get('llm.listenIpInfo')})",
                )
        self._role = role
        self._options["llm.Role"] = ROLE_OPTION[role]


def _overall(codes: list[LLMStatusCode]) -> LLMStatusCode:
    """The last failure, as the native LinkClusters/UnlinkClusters fold their per-cluster results."""
    return next((c for c in reversed(codes) if c != LLMStatusCode.LLM_SUCCESS), LLMStatusCode.LLM_SUCCESS)


def _shutdown_handler() -> None:
    """Finalize the live instance at interpreter exit, as the real package's atexit handler does."""
    instance = LLMDataDist.llm_engine_instance
    if instance is not None:
        try:
            instance.finalize()
        except LLMException:
            pass


atexit.register(_shutdown_handler)


def _engine_options(role: LLMRole, options: dict[str, str]) -> dict[str, str]:
    """The options the engine starts with, checked in the real order: ``ge.flowGraphMemMaxSize``, then
    what ``llm.LocalCommRes`` and ``llm.TransferBackend`` imply and need, then ``llm.listenIpInfo``."""
    flow = options.get("ge.flowGraphMemMaxSize")
    if flow is not None:
        check_isinstance("ge.flowGraphMemMaxSize", flow, str)
        raise_if_false(
            len(flow.split(",")) == 1, "ge.flowGraphMemMaxSize only support one mem pool in llm datadist"
        )
        raise_if_false(flow.isdigit(), f"ge.flowGraphMemMaxSize must be digit, config value={flow}")
    engine = dict(options)
    engine["llm.Role"] = ROLE_OPTION[role]
    local_comm_res = "llm.LocalCommRes" in options
    if local_comm_res:
        engine.setdefault("llm.EnableCacheManager", "1")
        engine.setdefault("llm.EnableRemoteCacheAccessible", "1")
    cm = engine.get("llm.EnableCacheManager") == "1"
    if local_comm_res:
        raise_if_false(cm, "llm.LocalCommRes is not supported when llm.EnableCacheManager is not configured.")
    if "llm.TransferBackend" in options:
        raise_if_false(
            cm, "llm.TransferBackend is not supported when llm.EnableCacheManager is not configured."
        )
        engine.setdefault("llm.EnableRemoteCacheAccessible", "1")
        raise_if_false(
            engine["llm.EnableRemoteCacheAccessible"] == "1",
            "llm.TransferBackend is not supported when llm.EnableRemoteCacheAccessible is not enable.",
        )
        raise_if_false(
            "llm.listenIpInfo" in options,
            "llm.TransferBackend is not supported when llm.listenIpInfo is not configured.",
        )
    if cm and "llm.listenIpInfo" in options:
        host, port = parse_listen_ip_info(options["llm.listenIpInfo"])
        engine["llm.ListenIp"] = host
        engine["llm.ListenPort"] = str(port)
    return engine


class _Endpoint:
    """The :class:`~kvtest.backends.sim.endpoint.Endpoint` an LLMDataDist gives its cache manager."""

    def __init__(self, dd: LLMDataDist) -> None:
        self._dd = dd

    @property
    def cluster_id(self) -> int:
        return self._dd._cluster_id

    @property
    def initialized(self) -> bool:
        return self._dd._initialized

    @property
    def sync_timeout_ms(self) -> int:
        return self._dd._sync_timeout_ms

    @property
    def remote_accessible(self) -> bool:
        return self._dd._remote_accessible

    @property
    def linked(self) -> bool:
        return self._dd._linked

    @property
    def pools(self) -> Mapping[str, MemoryPool]:
        return self._dd._pools

    @property
    def fixed(self) -> frozenset[str]:
        return self._dd._fixed

    def ctx(self) -> tuple[control.ControlPlane, Transport]:
        return self._dd._ctx()

    def publish_agent(self) -> None:
        self._dd._publish_agent()

    @property
    def faults(self) -> FaultSeam:
        return self._dd._seam
