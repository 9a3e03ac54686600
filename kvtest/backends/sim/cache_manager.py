"""``CacheManager`` (reached through ``LLMDataDist.cache_manager``): caches, keys and transfers.

Control records (under the namespace, see :mod:`control`):
``cache/<cluster>/<cache_id>`` the layout of an exported cache, ``key/<cluster>/<req>/<model>/<prefix>``
a CacheKey's batch slot, ``bkey/<cluster>/<model>`` a BlocksCacheKey's cache id.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, Union, cast

from kvtest.backends.sim import device, local_copy
from kvtest.backends.sim.async_transfer import (
    CacheTask,
    LayerSynchronizer,
    TransferConfig,
    TransferWithCacheKeyConfig,
)
from kvtest.backends.sim.cache import (
    BlocksCacheKey,
    Cache,
    CacheDesc,
    CacheKey,
    CacheKeyByIdAndIndex,
    MemInfo,
    Memtype,
    Placement,
)
from kvtest.backends.sim.checks import (
    UINT64_MAX,
    check_int64,
    check_isinstance,
    check_list_uint64,
    check_type,
    check_uint32,
    check_uint64,
)
from kvtest.backends.sim.layer_job import LayerJob
from kvtest.backends.sim.layout import (
    Span,
    block_list,
    block_spans,
    check_in_range,
    expand,
    slot_to_blocks_spans,
    tensor_pairs,
)
from kvtest.backends.sim.placement import check_pull_placements
from kvtest.backends.sim.pool import MemoryPool
from kvtest.backends.sim.seam import SPOILED_BYTES
from kvtest.backends.sim.status import (
    LLMException,
    LLMStatusCode,
    native_error,
    raise_if_false,
    raise_if_true,
    raise_param_invalid,
)
from kvtest.backends.sim.transport import TransferError

if TYPE_CHECKING:
    from kvtest.backends.sim.endpoint import Endpoint

AnyCacheKey = Union[CacheKey, CacheKeyByIdAndIndex]


@dataclass
class _Entry:
    cache: Cache
    exported: bool
    reg: int | None = None
    pool: MemoryPool | None = None
    keys: list[tuple[str, Any]] = field(default_factory=list)
    bkey: tuple[str, Any] | None = None
    deallocated: bool = False
    addrs: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Remote:
    """A peer's cache as its control record describes it."""

    agent: str
    addrs: list[int]
    slot_bytes: int
    batch: int
    blocks: bool
    host: bool = False
    device_pool: bool = True


def _key_path(cluster_id: int, key: CacheKey) -> tuple[object, ...]:
    """Where a key bound on ``cluster_id`` lives; the key's own cluster id only says where to pull from."""
    return ("key", cluster_id, key.req_id, key.model_id, key.prefix_id)


_Call = TypeVar("_Call", bound=Callable[..., None])


def _slowed(api: str) -> Callable[[_Call], _Call]:
    """A whole synchronous transfer call as the fault seam times it (``FaultSeam.slowed``), so the
    GB/s a caller measures around it drops by a ``slow`` fault's factor."""

    def wrap(method: _Call) -> _Call:
        @functools.wraps(method)
        def call(self: CacheManager, *args: Any, **kwargs: Any) -> None:
            with self._ep.faults.slowed(api):
                method(self, *args, **kwargs)

        return cast(_Call, call)

    return wrap


def _spoils_when_refused(api: str, target: Callable[..., tuple[Any, int]]) -> Callable[[_Call], _Call]:
    """Where the fault seam says a refused call still writes (``FaultSeam.spoils_when_refused``): it
    inverts ``SPOILED_BYTES`` bytes of its destination's first tensor, at the byte offset
    ``target(*args, **kwargs)`` gives with the cache."""

    def wrap(method: _Call) -> _Call:
        @functools.wraps(method)
        def call(self: CacheManager, *args: Any, **kwargs: Any) -> None:
            try:
                method(self, *args, **kwargs)
            except LLMException:
                if self._ep.faults.spoils_when_refused(api):
                    try:
                        cache, offset = target(*args, **kwargs)
                    except (TypeError, ValueError, IndexError, AttributeError):
                        pass  # arguments too broken to name a destination: nothing to write into
                    else:
                        self._spoil(cache, offset)
                raise

        return cast(_Call, call)

    return wrap


def _slot(cache: Any, index: Any) -> tuple[Any, int]:
    return cache, int(index) * cache.cache_desc.slot_bytes


def _first_block(cache: Any, blocks: Any) -> tuple[Any, int]:
    return _slot(cache, list(blocks)[0] if blocks else 0)


class CacheManager:
    """Allocates, registers and transfers caches for one :class:`LLMDataDist`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._ep = endpoint
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self._lock = threading.RLock()

    @property
    def endpoint(self) -> Endpoint:
        """What this manager's LLMDataDist gives it (faults, fixes, timeouts, the transport)."""
        return self._ep

    def entry(self, cache_id: int) -> _Entry | None:
        """What this manager holds for ``cache_id``, or None."""
        return self._entries.get(cache_id)

    # -- common -------------------------------------------------------------------------------
    def _begin(self, api: str) -> float:
        if self._ep.initialized:
            self._ep.faults.enter(api)
        return time.monotonic() + self._ep.sync_timeout_ms / 1000

    @contextlib.contextmanager
    def _engine(self, api: str, details: str) -> Iterator[None]:
        """The native phase of ``api``: an LLMException the sim raises inside is reported as the real
        package reports its engine's status (``[api] failed, error code is X, <details>.``), with the
        sim's own explanation chained to it (``__cause__``)."""
        self._native(api, details)
        prefix = f"[{api}] failed, error code is "
        try:
            yield
        except LLMException as exc:
            if str(exc).startswith(prefix) and str(exc).endswith(f", {details.rstrip('.')}."):
                raise
            raise native_error(api, exc.status_code, details) from exc

    def _native(self, api: str, details: str) -> None:
        """Where the real package, its Python checks passed, calls its engine: after ``finalize`` that
        call fails with LLM_FAILED ("Llm datadist of cluster:N is not initialized.",
        hicann/hixl src/llm_datadist/llm_datadist_v2.cc)."""
        if not self._ep.initialized:
            raise native_error(api, LLMStatusCode.LLM_FAILED, details)

    @staticmethod
    def check_cache_key(cache_key: CacheKey) -> None:
        """Exactly one of req_id and prefix_id must be valid (hicann/hixl v2/cache_manager.py)."""
        req_bad = cache_key.req_id < 0 or cache_key.req_id == UINT64_MAX
        prefix_bad = cache_key.prefix_id < 0 or cache_key.prefix_id == UINT64_MAX
        raise_if_true(
            req_bad and prefix_bad,
            "one of req id and prefix id should contain valid value:[0, 2**64-1), "
            f"req id:{cache_key.req_id},prefix id:{cache_key.prefix_id}.",
        )
        raise_if_true(
            not req_bad and not prefix_bad,
            "only one of req id and prefix id should contain valid value:[0, 2**64-1), "
            f"req id:{cache_key.req_id}, prefix id:{cache_key.prefix_id}.",
        )

    def remap_registered_memory(self, mem_infos: MemInfo | list[MemInfo]) -> None:
        """Checks as the real one; the native remap (re-mapping physical pages after a device memory
        fault) has nothing to do on the sim's CPU memory, so it succeeds."""
        raise_if_false(
            isinstance(mem_infos, (list, MemInfo)),
            f"mem_infos type only support list of MemInfo or MemInfo, but got {type(mem_infos)}.",
        )
        infos = mem_infos if isinstance(mem_infos, list) else [mem_infos]
        for i, info in enumerate(infos):
            raise_if_false(
                isinstance(info, MemInfo), f"mem_infos[{i}] type only support MemInfo, but got {type(info)}."
            )
            raise_if_false(
                info.mem_type == Memtype.MEM_TYPE_DEVICE,
                f"check mem_info.mem_type failed, only support Memtype.MEM_TYPE_DEVICE, index={i}.",
            )
            raise_if_false(info.addr != 0, f"check mem_info.addr failed, addr can not be zero, index={i}.")
            raise_if_false(info.size > 0, f"check mem_info.size failed, size must be > 0, index={i}.")
        self._native("remap_registered_memory", f"mem_info_list = {infos}")

    def _entry(self, cache: Any, arg: str = "cache") -> _Entry:
        check_type(arg, cache, Cache)
        entry = self._entries.get(cache.cache_id)
        if entry is None or entry.cache is not cache or not cache._valid:
            raise_param_invalid(f"{arg} (cache_id {cache.cache_id}) is not a valid cache of this process.")
        return entry

    def _publish_cache(self, entry: _Entry) -> None:
        plane, _ = self._ep.ctx()
        cache = entry.cache
        record = {
            "addrs": cache.tensor_addrs,
            "slot_bytes": cache.cache_desc.slot_bytes,
            "batch": cache.cache_desc.batch_size,
            "blocks": cache.is_blocks_cache,
            "host": cache.cache_desc.placement == Placement.HOST,
            "device_pool": "DEVICE" in self._ep.pools,
        }
        plane.put(plane.key("cache", self._ep.cluster_id, cache.cache_id), record)

    def _release_records(self, entry: _Entry) -> None:
        plane, _ = self._ep.ctx()
        if entry.exported:
            key = plane.key("cache", self._ep.cluster_id, entry.cache.cache_id)
            record = plane.fetch(key)
            if record is not None:
                plane.release(key, record)
        if entry.bkey is not None:
            plane.release(*entry.bkey)

    def _sweep(self) -> None:
        """Free deallocated pool caches whose keys are all released (pulled or removed)."""
        plane, _ = self._ep.ctx()
        for cache_id, entry in list(self._entries.items()):
            if entry.deallocated and all(plane.fetch(k) is None for k, _ in entry.keys):
                assert entry.pool is not None
                self._release_records(entry)
                entry.exported = False
                for addr in entry.addrs:
                    entry.pool.free(addr)
                del self._entries[cache_id]

    def _drop_keys(self, entry: _Entry) -> None:
        plane, _ = self._ep.ctx()
        for path, _record in entry.keys:
            current = plane.fetch(path)
            if current is not None:
                plane.release(path, current)

    def _consume(self, claim: tuple[str, Any] | None, pulled: set[int] | None) -> None:
        """After a successful pull: the key goes once every tensor of it was pulled (``pulled`` None: all)."""
        if claim is None or not claim[1].get("consumable"):
            return
        plane, _ = self._ep.ctx()
        path, record = claim
        left = sorted(set(record["tensors"]) - pulled) if pulled is not None else []
        if not left:
            plane.release(path, record)
            return

        def change(old: Any) -> Any:
            if not isinstance(old, dict) or "tensors" not in old:
                return old  # released meanwhile
            return {**old, "tensors": sorted(set(old["tensors"]) - (pulled or set()))}

        plane.update(path, change)

    def release_all(self) -> None:
        with self._lock:
            for entry in list(self._entries.values()):
                self._release_records(entry)
                self._drop_keys(entry)
                entry.cache.invalidate()
            self._entries.clear()

    # -- pool caches --------------------------------------------------------------------------
    def _check_pool_desc(self, cache_desc: CacheDesc) -> None:
        """The real ``allocate_cache`` / ``allocate_blocks_cache`` precondition on the descriptor."""
        raise_if_false(cache_desc.num_tensors > 0, "num_tensors should be bigger than zero.")
        raise_if_false(
            cache_desc.placement.name in self._ep.pools,
            "you should config memory pool firstly and then set placement that matches it.",
        )

    def _allocate(self, api: str, cache_desc: CacheDesc, blocks: bool) -> _Entry:
        # the engine numbers the cache before it allocates (llm_datadist_v2.cc, cache_manager.cc
        # Allocate(cache_id, ...)): a failed allocation uses up its id too
        cache_id = next(self._ids)
        pool = self._ep.pools[cache_desc.placement.name]
        addrs: list[int] = []
        for _ in range(cache_desc.num_tensors):
            addr = pool.allocate(cache_desc.size)
            if addr is None:
                for a in addrs:
                    pool.free(a)
                raise native_error(
                    api,
                    LLMStatusCode.LLM_OUT_OF_MEMORY,
                    f"memory pool of {pool.size} bytes cannot hold {cache_desc.num_tensors} x "
                    f"{cache_desc.size} bytes ({pool.bytes_in_use} in use)",
                )
            addrs.append(addr)
        cache_desc._is_blocks = blocks
        cache = Cache(cache_id, cache_desc, list(addrs), self, False, blocks)
        entry = _Entry(cache, exported=True, pool=pool, addrs=addrs)
        self._entries[cache.cache_id] = entry
        self._publish_cache(entry)
        return entry

    def _bind_keys(self, api: str, entry: _Entry, cache_keys: Any) -> None:
        if len(cache_keys) > entry.cache.cache_desc.batch_size:
            raise_param_invalid("cache_keys length should not be bigger than batch size.")
        plane, _ = self._ep.ctx()
        for index, key in enumerate(cache_keys):
            if key.req_id == UINT64_MAX and key.prefix_id == UINT64_MAX:
                continue
            # the key's cluster id is ignored here (cache_manager.cc CreateDataCacheKey uses req/prefix
            # and model ids only)
            path = plane.key(*_key_path(self._ep.cluster_id, key))
            if plane.fetch(path) is not None:
                raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, f"cache key {key} already exists")
            # A pull consumes the key only for a pool cache (is_owned) and a req_id key
            # (fsm/send_state.cc QueryCacheEntryAndOffset); layer-ranged pulls consume it once every
            # tensor has been pulled (SendState::Process, cache_manager.cc RemoveCacheKey).
            record = {
                "cache_id": entry.cache.cache_id,
                "batch_index": index,
                "consumable": entry.pool is not None and key.prefix_id == UINT64_MAX,
                "tensors": list(range(entry.cache.cache_desc.num_tensors)),
            }
            plane.put(path, record)
            entry.keys.append((path, record))

    def allocate_cache(self, cache_desc: CacheDesc, cache_keys: Sequence[CacheKey] = ()) -> Cache:
        """A cache from the memory pool; key *i* names batch slot *i* (req_id UINT64_MAX skips a slot)."""
        self._begin("allocate_cache")
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("cache_keys", cache_keys, [list, tuple], CacheKey)
        self._check_pool_desc(cache_desc)
        with self._engine("allocate_cache", f"cache_desc = {cache_desc}"), self._lock:
            self._sweep()
            entry = self._allocate("allocate_cache", cache_desc, blocks=False)
            self._bind_keys("allocate_cache", entry, cache_keys)
            return entry.cache

    def allocate_blocks_cache(
        self, cache_desc: CacheDesc, blocks_cache_key: BlocksCacheKey | None = None
    ) -> Cache:
        """A blocks cache from the memory pool, optionally published under ``blocks_cache_key``."""
        self._begin("allocate_blocks_cache")
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("blocks_cache_key", blocks_cache_key, BlocksCacheKey)
        self._check_pool_desc(cache_desc)
        with self._engine("allocate_blocks_cache", f"cache_desc = {cache_desc}"), self._lock:
            self._sweep()
            entry = self._allocate("allocate_blocks_cache", cache_desc, blocks=True)
            if blocks_cache_key is not None:
                self._bind_blocks_key("allocate_blocks_cache", entry, blocks_cache_key)
            return entry.cache

    def _deallocate(self, api: str, cache: Cache, blocks: bool) -> None:
        self._begin(api)
        check_isinstance("cache", cache, Cache)
        if blocks:
            raise_if_false(cache.is_blocks_cache, "param check failed, cache should be blocks cache.")
        else:
            raise_if_true(cache.is_blocks_cache, "param check failed, cache can not be blocks cache.")
        with self._engine(api, f"cache_id = {cache.cache_id}"), self._lock:
            entry = self._entries.get(cache.cache_id)
            # the native DeallocateCache is SUCCESS for an id it does not own: unknown, registered, or
            # already deallocated (cache_mgr/cache_manager.cc); the Python object is invalidated anyway
            if entry is None or entry.pool is None or entry.deallocated:
                cache.invalidate()
                return
            # a blocks cache goes at once; a cache whose CacheKeys are pending stays reachable by its
            # peers until the last key is pulled or removed (CacheManager::Deallocate, cache_mgr/
            # cache_manager.cc: "delayed for that it is still referenced by cache_key(s)"); _sweep frees it
            if blocks:
                self._release_records(entry)
                entry.exported = False
            entry.deallocated = True
            entry.cache.invalidate()
            self._sweep()

    def deallocate_cache(self, cache: Cache) -> None:
        """Free a pool cache; the memory returns to the pool once every key is released."""
        self._deallocate("deallocate_cache", cache, blocks=False)

    def deallocate_blocks_cache(self, cache: Cache) -> None:
        self._deallocate("deallocate_blocks_cache", cache, blocks=True)

    def remove_cache_key(self, cache_key: CacheKey) -> None:
        """Drop a key so its slot can no longer be pulled; nothing happens if a pull consumed it, or
        for a registered cache's key (cache_manager.cc RemoveCacheKey skips caches it does not own)."""
        self._begin("remove_cache_key")
        check_isinstance("cache_key", cache_key, CacheKey)
        with self._engine("remove_cache_key", f"cache_key = {cache_key}"), self._lock:
            plane, _ = self._ep.ctx()
            path = plane.key(*_key_path(self._ep.cluster_id, cache_key))
            record = plane.fetch(path)
            entry = self._entries.get(int(record["cache_id"])) if record is not None else None
            if record is not None and (entry is None or entry.pool is not None):
                plane.release(path, record)
            self._sweep()

    # -- registered caches --------------------------------------------------------------------
    def _check_register(self, cache_desc: Any, addrs: Any, remote_accessible: Any) -> None:
        """The real ``register_cache`` / ``register_blocks_cache`` checks after the key's type check."""
        check_isinstance("remote_accessible", remote_accessible, bool)
        raise_if_true(
            self._ep.linked and remote_accessible, "you can not register remote accessible cache after link."
        )
        raise_if_false(len(addrs) > 0, "addrs can not be empty.")
        raise_if_false(len(addrs) == cache_desc.num_tensors, "addrs length should be equal to num_tensors.")
        for addr in addrs:
            raise_if_false(addr != 0, "addr can not be zero.")

    def _register(
        self, api: str, cache_desc: Any, addrs: Any, remote_accessible: Any, blocks: bool
    ) -> _Entry:
        cache_id = next(self._ids)  # numbered before anything can fail, as the engine does
        for addr in addrs:
            check_uint64("addrs", addr)
        if remote_accessible is None:
            remote_accessible = cache_desc.placement == Placement.DEVICE and not self._ep.linked
        if remote_accessible and cache_desc.placement == Placement.DEVICE:
            # comm_mem_manager.cc RegisterCacheMem registers these with HCCL/HIXL as device memory
            for addr in addrs:
                if not device.is_device(int(addr), cache_desc.size):
                    raise native_error(
                        api,
                        LLMStatusCode.LLM_FAILED,
                        f"cache_desc = {cache_desc}: address {int(addr):#x} ({cache_desc.size} bytes) is not "
                        "device memory, so it cannot be registered as Placement.DEVICE (allocate it on the "
                        "device: SimBackend.to_device, tensor.npu() on an NPU)",
                    )
        _, transport = self._ep.ctx()
        try:
            reg = transport.register([(a, cache_desc.size) for a in addrs])
        except Exception as exc:
            raise native_error(
                api, LLMStatusCode.LLM_FAILED, f"nixl could not register memory: {exc!r}"
            ) from exc
        cache_desc._is_blocks = blocks
        cache = Cache(cache_id, cache_desc, [int(a) for a in addrs], self, True, blocks)
        entry = _Entry(cache, exported=bool(remote_accessible), reg=reg)
        self._entries[cache.cache_id] = entry
        self._ep.publish_agent()
        if entry.exported:
            self._publish_cache(entry)
        return entry

    def _bind_blocks_key(self, api: str, entry: _Entry, key: BlocksCacheKey) -> None:
        plane, _ = self._ep.ctx()
        path = plane.key("bkey", self._ep.cluster_id, key.model_id)  # the key's cluster id is ignored
        if plane.fetch(path) is not None:
            raise native_error(api, LLMStatusCode.LLM_PARAM_INVALID, f"blocks cache key {key} already exists")
        record = {"cache_id": entry.cache.cache_id}
        plane.put(path, record)
        entry.bkey = (path, record)

    def register_cache(
        self,
        cache_desc: CacheDesc,
        addrs: Sequence[int],
        cache_keys: Sequence[CacheKey] = (),
        remote_accessible: bool | None = None,
    ) -> Cache:
        """Register memory the caller owns (e.g. ``tensor.data_ptr()``) as a cache."""
        self._begin("register_cache")
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("addrs", addrs, list, int)
        check_isinstance("cache_keys", cache_keys, [tuple, list], CacheKey)
        self._check_register(cache_desc, addrs, remote_accessible)
        with self._engine("register_cache", f"cache_desc = {cache_desc}"), self._lock:
            entry = self._register("register_cache", cache_desc, addrs, remote_accessible, blocks=False)
            self._bind_keys("register_cache", entry, cache_keys)
            return entry.cache

    def register_blocks_cache(
        self,
        cache_desc: CacheDesc,
        addrs: Sequence[int],
        blocks_cache_key: BlocksCacheKey | None = None,
        remote_accessible: bool | None = None,
    ) -> Cache:
        """Register caller memory as a blocks cache, optionally published under ``blocks_cache_key``."""
        self._begin("register_blocks_cache")
        check_isinstance("cache_desc", cache_desc, CacheDesc)
        check_isinstance("addrs", addrs, list, int)
        check_isinstance("blocks_cache_key", blocks_cache_key, BlocksCacheKey)
        self._check_register(cache_desc, addrs, remote_accessible)
        with self._engine("register_blocks_cache", f"cache_desc = {cache_desc}"), self._lock:
            entry = self._register("register_blocks_cache", cache_desc, addrs, remote_accessible, blocks=True)
            if blocks_cache_key is not None:
                self._bind_blocks_key("register_blocks_cache", entry, blocks_cache_key)
            return entry.cache

    def unregister_cache(self, cache_id: int) -> None:
        """Forget a registered cache; peers can no longer reach it."""
        self._begin("unregister_cache")
        check_isinstance("cache_id", cache_id, int)
        check_int64("cache_id", cache_id)
        with self._engine("unregister_cache", f"cache_id = {cache_id}"), self._lock:
            entry = self._entries.get(cache_id)
            if entry is None:
                return  # data_cache_engine.cc Unregister: an unknown id is SUCCESS
            self._release_records(entry)
            self._drop_keys(entry)
            _, transport = self._ep.ctx()
            if entry.reg is not None:
                transport.deregister(entry.reg)
                self._ep.publish_agent()
            elif entry.pool is not None:  # the entry owned the pool memory
                for addr in entry.addrs:
                    entry.pool.free(addr)
            # the real unregister_cache takes an id: the Cache object's fields stay as they are
            entry.cache._valid = False
            del self._entries[cache_id]

    # -- remote lookups -----------------------------------------------------------------------
    def peer(self, api: str, cluster_id: int) -> str:
        plane, _ = self._ep.ctx()
        links, agent = plane.fetch_many(
            [plane.key("links", self._ep.cluster_id), plane.key("agent", cluster_id)]
        )
        if not links or str(cluster_id) not in links:
            raise native_error(api, LLMStatusCode.LLM_NOT_YET_LINK, f"cluster {cluster_id} is not linked")
        if agent is None:
            raise native_error(api, LLMStatusCode.LLM_NOT_YET_LINK, f"cluster {cluster_id} has finalized")
        _, transport = self._ep.ctx()
        from kvtest.backends.sim.control import decode_bytes

        try:
            transport.load_peer(
                agent["agent"], decode_bytes(agent["meta"]), int(agent["version"]), agent.get("probe")
            )
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is a failed call, not a crash
            raise native_error(
                api, LLMStatusCode.LLM_FAILED, f"cannot reach cluster {cluster_id}: {type(exc).__name__}"
            ) from None
        return str(agent["agent"])

    def remote_cache(self, api: str, agent: str, cluster_id: int, cache_id: int) -> _Remote:
        plane, _ = self._ep.ctx()
        record = plane.fetch(plane.key("cache", cluster_id, cache_id))
        if record is None:
            raise native_error(
                api,
                LLMStatusCode.LLM_KV_CACHE_NOT_EXIST,
                f"cache {cache_id} does not exist on cluster {cluster_id}",
            )
        return _Remote(
            agent,
            list(record["addrs"]),
            int(record["slot_bytes"]),
            int(record["batch"]),
            record["blocks"],
            bool(record.get("host", False)),
            bool(record.get("device_pool", True)),
        )

    def _resolve(self, api: str, key: AnyCacheKey) -> tuple[_Remote, int, tuple[str, Any] | None]:
        """The remote cache, batch index, and (for a CacheKey) the record a successful pull releases."""
        agent = self.peer(api, key.cluster_id)
        plane, _ = self._ep.ctx()
        if isinstance(key, CacheKeyByIdAndIndex):
            remote = self.remote_cache(api, agent, key.cluster_id, key.cache_id)
            check_in_range("batch_index of cache_key", [key.batch_index], remote.batch)
            return remote, key.batch_index, None
        if (key.req_id == UINT64_MAX) == (key.prefix_id == UINT64_MAX):
            raise_param_invalid("one and only one of req_id and prefix_id should be valid in cache_key.")
        path = plane.key(*_key_path(key.cluster_id, key))
        record = plane.fetch(path)
        if record is None:
            raise native_error(api, LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, f"{key} does not exist")
        remote = self.remote_cache(api, agent, key.cluster_id, int(record["cache_id"]))
        return remote, int(record["batch_index"]), (path, record)

    def remote_blocks(self, api: str, key: BlocksCacheKey) -> _Remote:
        agent = self.peer(api, key.cluster_id)
        plane, _ = self._ep.ctx()
        record = plane.fetch(plane.key("bkey", key.cluster_id, key.model_id))
        if record is None:
            raise native_error(api, LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, f"{key} does not exist")
        return self.remote_cache(api, agent, key.cluster_id, int(record["cache_id"]))

    def move(
        self, api: str, op: str, agent: str, segments: list[tuple[int, int, int]], deadline: float
    ) -> None:
        """Run one NIXL transfer of (local, remote, bytes) segments, failing like the native call."""
        _, transport = self._ep.ctx()
        seam = self._ep.faults
        began = time.monotonic()
        # a synchronous call is timed as a whole (_slowed); an async layer's move is its transfer
        timed = seam.slowed(api) if api == "transfer_cache_async" else contextlib.nullcontext()
        try:
            with timed:
                transport.transfer(
                    op, agent, segments, deadline, flip=seam.corrupts(api), stall=seam.stalls(api)
                )
            if seam.spoils_source(api):
                self._spoil_source(op, agent, segments, deadline)
        except TransferError as exc:
            if exc.code == LLMStatusCode.LLM_TIMEOUT:
                limit = self._ep.sync_timeout_ms
                before = round((began - (deadline - limit / 1000)) * 1000)
                details = (f"{exc.details}: sync_kv_timeout is {limit} ms, {before} ms of it went "
                           "before the transfer began")
            else:
                details = exc.details
            raise native_error(api, exc.code, details) from None

    def _spoil(self, cache: Any, offset: int) -> None:
        """Invert ``SPOILED_BYTES`` bytes of ``cache``'s first tensor from ``offset`` (a refused call
        that still writes), where that lies inside a tensor this process still has."""
        entry = self._entries.get(getattr(cache, "cache_id", -1))
        if entry is None or not entry.cache.tensor_addrs:
            return
        desc = entry.cache.cache_desc
        k = min(SPOILED_BYTES, desc.batch_size * desc.slot_bytes - offset)
        if offset < 0 or k <= 0:
            return
        for i in range(k):
            cell = ctypes.c_uint8.from_address(entry.cache.tensor_addrs[0] + offset + i)
            cell.value ^= 0xFF

    def _spoil_source(
        self, op: str, agent: str, segments: list[tuple[int, int, int]], deadline: float
    ) -> None:
        """A move that also writes its source (``FaultSeam.spoils_source``): 16 bytes of the first
        segment's source take the 16 that follow them (a pull writes back into the peer's cache, a
        push into its own)."""
        _, transport = self._ep.ctx()
        k = SPOILED_BYTES
        for local, remote, n in segments:
            if n >= 2 * k:
                if op == "WRITE":  # the source is this process's memory
                    ctypes.memmove(local, local + k, k)
                else:
                    transport.transfer("WRITE", agent, [(local + k, remote, k)], deadline)
                return

    def _check_placements(self, api: str, entry: _Entry, remote: _Remote) -> None:
        """Host and device pulls on a two-sided link (see :mod:`kvtest.backends.sim.placement`)."""
        if self._ep.remote_accessible:
            return
        check_pull_placements(
            api,
            local_host=entry.cache.cache_desc.placement == Placement.HOST,
            local_blocks=entry.cache.is_blocks_cache,
            local_device_pool="DEVICE" in self._ep.pools,
            remote_host=remote.host,
            remote_blocks=remote.blocks,
            remote_device_pool=remote.device_pool,
        )

    @staticmethod
    def _same_block(local: int, remote: int, what: str) -> None:
        if local != remote:
            raise_param_invalid(f"{what} size differs: local {local} bytes, remote {remote} bytes.")

    # -- what the fault seam changes (see kvtest.backends.sim.seam) -----------------------------
    def _dst_layers(self, api: str, dst_layer_range: range | None) -> range | None:
        """``dst_layer_range``, or the same number of layers from layer 0 where the seam says so."""
        if isinstance(dst_layer_range, range) and self._ep.faults.ignores_dst_layers(api):
            return range(0, len(dst_layer_range))
        return dst_layer_range

    def _batch(self, api: str, index: int) -> int:
        """A batch index argument as the seam has ``api`` use it."""
        return self._ep.faults.batch_index(api, index)

    def expand(
        self,
        api: str,
        pairs: list[tuple[int, int]],
        src_addrs: Sequence[int],
        dst_addrs: Sequence[int],
        spans: list[Span],
        dst_bytes: int | None,
    ) -> list[tuple[int, int, int]]:
        """:func:`expand` of each group of pairs and spans the fault seam says ``api`` moves (the given
        ones unless a fault rewrites them or adds to them)."""
        groups = self._ep.faults.moves(api, pairs, spans, dst_bytes, len(dst_addrs))
        return [move for p, s in groups for move in expand(p, src_addrs, dst_addrs, s)]

    # -- pulls --------------------------------------------------------------------------------
    @_spoils_when_refused(
        "pull_cache", lambda cache_key, cache, batch_index=0, *a, **k: _slot(cache, batch_index)
    )
    @_slowed("pull_cache")
    def pull_cache(
        self,
        cache_key: AnyCacheKey,
        cache: Cache,
        batch_index: int = 0,
        size: int = -1,
        **kwargs: Any,
    ) -> None:
        """Pull the remote batch slot ``cache_key`` names into ``cache[batch_index]`` (READ)."""
        deadline = self._begin("pull_cache")
        # the Python layer's checks, in its order and words (hicann/hixl v2/cache_manager.py pull_cache)
        if self._ep.remote_accessible:
            check_isinstance("cache_key", cache_key, CacheKeyByIdAndIndex)
        else:
            check_isinstance("cache_key", cache_key, [CacheKey, CacheKeyByIdAndIndex])
        src_layer_range = kwargs.get("src_layer_range")
        dst_layer_range = kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", 2)
        check_isinstance("cache", cache, Cache)
        check_uint32("batch_index", batch_index)
        check_int64("size", size)
        raise_if_true(cache.is_blocks_cache, "param check failed, cache can not be blocks cache.")
        raise_if_false(
            size == -1 or size > 0,
            f"[pull_cache] param check failed, size ({size}) is invalid, should be = -1 or > 0",
        )
        _check_tensor_num_per_layer("pull_cache", tensor_num_per_layer, cache)
        if isinstance(cache_key, CacheKey):
            self.check_cache_key(cache_key)
        check_layer_ranges(src_layer_range, dst_layer_range)
        with self._engine("pull_cache", f"cache_key = {cache_key}"):
            self._pull_cache(
                deadline,
                cache_key,
                cache,
                batch_index,
                size,
                src_layer_range,
                dst_layer_range,
                tensor_num_per_layer,
            )

    def _pull_cache(
        self,
        deadline: float,
        cache_key: AnyCacheKey,
        cache: Cache,
        batch_index: int,
        size: int,
        src_layer_range: range | None,
        dst_layer_range: range | None,
        tensor_num_per_layer: int,
    ) -> None:
        self._not_own_cluster(cache_key.cluster_id)
        entry = self._entry(cache)
        desc = entry.cache.cache_desc
        check_in_range("batch_index", [batch_index], desc.batch_size)
        remote, remote_index, claim = self._resolve("pull_cache", cache_key)
        self._check_placements("pull_cache", entry, remote)
        if size == -1:
            self._same_block(desc.slot_bytes, remote.slot_bytes, "batch slot")
            nbytes = desc.slot_bytes
        else:
            if size > min(desc.slot_bytes, remote.slot_bytes):
                raise_param_invalid(f"size {size} is bigger than a batch slot ({desc.slot_bytes} bytes).")
            nbytes = size
        pairs = tensor_pairs(
            len(remote.addrs),
            desc.num_tensors,
            src_layer_range,
            self._dst_layers("pull_cache", dst_layer_range),
            tensor_num_per_layer,
        )
        dst_index = self._batch("pull_cache", batch_index)
        spans = [(remote_index * remote.slot_bytes, dst_index * desc.slot_bytes, nbytes)]
        dst_bytes = desc.batch_size * desc.slot_bytes
        moves = self.expand("pull_cache", pairs, remote.addrs, entry.cache.tensor_addrs, spans, dst_bytes)
        self.move("pull_cache", "READ", remote.agent, [(d, s, n) for s, d, n in moves], deadline)
        self._consume(claim, None if src_layer_range is None else {s for s, _ in pairs})

    @_spoils_when_refused(
        "pull_blocks",
        lambda src_cache_key, dst_cache, src_blocks=(), dst_blocks=(), *a, **k: _first_block(
            dst_cache, dst_blocks
        ),
    )
    @_slowed("pull_blocks")
    def pull_blocks(
        self,
        src_cache_key: AnyCacheKey | BlocksCacheKey,
        dst_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        **kwargs: Any,
    ) -> None:
        """Pull remote blocks (BlocksCacheKey) or a remote batch slot (cache keys) into local blocks."""
        deadline = self._begin("pull_blocks")
        # the Python layer's checks, in its order and words (hicann/hixl v2/cache_manager.py pull_blocks)
        src_layer_range = kwargs.get("src_layer_range")
        dst_layer_range = kwargs.get("dst_layer_range")
        tensor_num_per_layer = kwargs.get("tensor_num_per_layer", 2)
        check_isinstance("src_cache_key", src_cache_key, [CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey])
        check_isinstance("dst_cache", dst_cache, Cache)
        check_isinstance("src_blocks", src_blocks, [list, tuple], int)
        check_isinstance("dst_blocks", dst_blocks, [list, tuple], int)
        raise_if_false(dst_cache.is_blocks_cache, "param check failed, dst_cache should be blocks cache.")
        raise_if_false(len(dst_blocks) > 0, "dst_blocks can not be empty.")
        _check_tensor_num_per_layer("pull_blocks", tensor_num_per_layer, dst_cache)
        if isinstance(src_cache_key, BlocksCacheKey):
            raise_if_false(len(src_blocks) > 0, "src_blocks can not be empty.")
        else:
            if isinstance(src_cache_key, CacheKey):
                self.check_cache_key(src_cache_key)
            raise_if_false(
                len(src_blocks) == 0,
                "src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey.",
            )
        check_layer_ranges(src_layer_range, dst_layer_range)
        with self._engine("pull_blocks", f"src_cache_key = {src_cache_key}"):
            self._pull_blocks(
                deadline,
                src_cache_key,
                dst_cache,
                src_blocks,
                dst_blocks,
                src_layer_range,
                dst_layer_range,
                tensor_num_per_layer,
            )

    def _pull_blocks(
        self,
        deadline: float,
        src_cache_key: AnyCacheKey | BlocksCacheKey,
        dst_cache: Cache,
        src_blocks: Sequence[int],
        dst_blocks: Sequence[int],
        src_layer_range: range | None,
        dst_layer_range: range | None,
        tensor_num_per_layer: int,
    ) -> None:
        self._not_own_cluster(src_cache_key.cluster_id)
        src = block_list("src_blocks", src_blocks)
        dst = block_list("dst_blocks", dst_blocks)
        entry = self._entry(dst_cache, "dst_cache")
        desc = entry.cache.cache_desc
        check_in_range("dst_blocks", dst, desc.batch_size)
        claim = None
        spans: list[Span]
        if isinstance(src_cache_key, BlocksCacheKey):
            if len(src) != len(dst):
                raise_param_invalid("src_blocks and dst_blocks should have the same length.")
            remote = self.remote_blocks("pull_blocks", src_cache_key)
            self._check_placements("pull_blocks", entry, remote)
            check_in_range("src_blocks", src, remote.batch)
            self._same_block(desc.slot_bytes, remote.slot_bytes, "block")
            spans = block_spans(src, dst, desc.slot_bytes)
        else:
            remote, remote_index, claim = self._resolve("pull_blocks", src_cache_key)
            self._check_placements("pull_blocks", entry, remote)
            spans = slot_to_blocks_spans(remote_index, remote.slot_bytes, dst, desc.slot_bytes)
        pairs = tensor_pairs(
            len(remote.addrs),
            desc.num_tensors,
            src_layer_range,
            self._dst_layers("pull_blocks", dst_layer_range),
            tensor_num_per_layer,
        )
        dst_bytes = desc.batch_size * desc.slot_bytes
        moves = self.expand("pull_blocks", pairs, remote.addrs, entry.cache.tensor_addrs, spans, dst_bytes)
        self.move("pull_blocks", "READ", remote.agent, [(d, s, n) for s, d, n in moves], deadline)
        self._consume(claim, None if src_layer_range is None else {s for s, _ in pairs})

    def _not_own_cluster(self, cluster_id: int) -> None:
        """The engine refuses a pull from its own cluster, linked or not (llm_datadist_v2.cc PullCache)."""
        if cluster_id == self._ep.cluster_id:
            raise_param_invalid(f"data can not be pulled from own cluster:{cluster_id}")

    # -- pushes -------------------------------------------------------------------------------
    def _require_remote_mode(self, api: str) -> None:
        if not self._ep.remote_accessible:
            raise_param_invalid(f"{api} is only supported while enable_remote_cache_accessible is True")

    @_slowed("push_cache")
    def push_cache(
        self,
        dst_cache_key: CacheKeyByIdAndIndex,
        src_cache: Cache,
        src_batch_index: int = 0,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        size: int = -1,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Write ``src_cache[src_batch_index]`` into the remote cache slot ``dst_cache_key`` names (WRITE)."""
        deadline = self._begin("push_cache")
        # the Python layer's checks, in its order and words (hicann/hixl v2/cache_manager.py push_cache)
        self._require_remote_mode("push_cache")
        check_isinstance("dst_cache_key", dst_cache_key, [CacheKeyByIdAndIndex], allow_none=False)
        check_isinstance("src_cache", src_cache, Cache, allow_none=False)
        check_uint32("src_batch_index", src_batch_index)
        raise_if_false(not src_cache.is_blocks_cache, "param check failed, cache can not be blocks cache.")
        _check_tensor_num_per_layer("push_cache", tensor_num_per_layer, src_cache)
        src_layer_range, dst_layer_range = _push_layer_ranges(
            src_layer_range, dst_layer_range, src_cache, tensor_num_per_layer
        )
        check_int64("size", size)
        raise_if_false(
            size == -1, f"[push_cache] param check failed, size ({size}) is invalid, should be = -1."
        )
        with self._engine("push_cache", f"dst_cache_key = {dst_cache_key}"):
            self._push_cache(
                deadline,
                dst_cache_key,
                src_cache,
                src_batch_index,
                src_layer_range,
                dst_layer_range,
                tensor_num_per_layer,
            )

    def _push_cache(
        self,
        deadline: float,
        dst_cache_key: CacheKeyByIdAndIndex,
        src_cache: Cache,
        src_batch_index: int,
        src_layer_range: range,
        dst_layer_range: range,
        tensor_num_per_layer: int,
    ) -> None:
        entry = self._entry(src_cache, "src_cache")
        desc = entry.cache.cache_desc
        check_in_range("src_batch_index", [src_batch_index], desc.batch_size)
        remote, remote_index, _ = self._resolve("push_cache", dst_cache_key)
        self._same_block(desc.slot_bytes, remote.slot_bytes, "batch slot")
        pairs = tensor_pairs(
            desc.num_tensors,
            len(remote.addrs),
            src_layer_range,
            self._dst_layers("push_cache", dst_layer_range),
            tensor_num_per_layer,
        )
        src_index = self._batch("push_cache", src_batch_index)
        spans = [(src_index * desc.slot_bytes, remote_index * remote.slot_bytes, desc.slot_bytes)]
        dst_bytes = remote.batch * remote.slot_bytes
        moves = self.expand("push_cache", pairs, entry.cache.tensor_addrs, remote.addrs, spans, dst_bytes)
        self.move("push_cache", "WRITE", remote.agent, moves, deadline)

    @_slowed("push_blocks")
    def push_blocks(
        self,
        dst_cache_key: BlocksCacheKey,
        src_cache: Cache,
        src_blocks: Sequence[int] = (),
        dst_blocks: Sequence[int] = (),
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Write local block ``src_blocks[i]`` to remote block ``dst_blocks[i]`` (WRITE)."""
        deadline = self._begin("push_blocks")
        # the Python layer's checks, in its order and words (hicann/hixl v2/cache_manager.py push_blocks)
        self._require_remote_mode("push_blocks")
        check_isinstance("dst_cache_key", dst_cache_key, [BlocksCacheKey])
        check_isinstance("src_cache", src_cache, Cache)
        check_isinstance("src_blocks", src_blocks, [list, tuple], int)
        check_isinstance("dst_blocks", dst_blocks, [list, tuple], int)
        raise_if_false(src_cache.is_blocks_cache, "param check failed, cache should be blocks cache.")
        raise_if_false(len(dst_blocks) > 0, "dst_blocks can not be empty.")
        _check_tensor_num_per_layer("push_blocks", tensor_num_per_layer, src_cache)
        src_layer_range, dst_layer_range = _push_layer_ranges(
            src_layer_range, dst_layer_range, src_cache, tensor_num_per_layer
        )
        with self._engine("push_blocks", f"dst_cache_key = {dst_cache_key}"):
            self._push_blocks(
                deadline,
                dst_cache_key,
                src_cache,
                src_blocks,
                dst_blocks,
                src_layer_range,
                dst_layer_range,
                tensor_num_per_layer,
            )

    def _push_blocks(
        self,
        deadline: float,
        dst_cache_key: BlocksCacheKey,
        src_cache: Cache,
        src_blocks: Sequence[int],
        dst_blocks: Sequence[int],
        src_layer_range: range,
        dst_layer_range: range,
        tensor_num_per_layer: int,
    ) -> None:
        src = block_list("src_blocks", src_blocks)
        dst = block_list("dst_blocks", dst_blocks)
        entry = self._entry(src_cache, "src_cache")
        desc = entry.cache.cache_desc
        if len(src) != len(dst):
            raise_param_invalid("src_blocks and dst_blocks should have the same length.")
        check_in_range("src_blocks", src, desc.batch_size)
        remote = self.remote_blocks("push_blocks", dst_cache_key)
        check_in_range("dst_blocks", dst, remote.batch)
        self._same_block(desc.slot_bytes, remote.slot_bytes, "block")
        pairs = tensor_pairs(
            desc.num_tensors,
            len(remote.addrs),
            src_layer_range,
            self._dst_layers("push_blocks", dst_layer_range),
            tensor_num_per_layer,
        )
        spans = block_spans(src, dst, desc.slot_bytes)
        dst_bytes = remote.batch * remote.slot_bytes
        moves = self.expand("push_blocks", pairs, entry.cache.tensor_addrs, remote.addrs, spans, dst_bytes)
        self.move("push_blocks", "WRITE", remote.agent, moves, deadline)

    # -- asynchronous layer-by-layer push -----------------------------------------------------
    def transfer_cache_async(
        self,
        src_cache: Cache,
        layer_synchronizer: LayerSynchronizer,
        transfer_configs: Sequence[TransferWithCacheKeyConfig | TransferConfig],
        src_block_indices: Sequence[int] | None = None,
        dst_block_indices: Sequence[int] | None = None,
        dst_block_memory_size: int | None = None,
    ) -> CacheTask:
        """Push layer by layer on a worker thread as ``layer_synchronizer`` releases each layer.

        The checks here are the Python layer's (hicann/hixl v2/cache_manager.py and v2/llm_utils.py
        ``transfer_cache_async``, ``TransferCacheJob.init``); link, key and block problems come back
        as per-config result codes from the worker, as from the native per-layer call.
        """
        self._begin("transfer_cache_async")
        check_isinstance("src_cache", src_cache, Cache, allow_none=False)
        desc = src_cache.cache_desc
        raise_if_true(desc.placement == Placement.HOST, "src cache not support placement HOST")
        for name, indices in (
            ("dst_block_indices", dst_block_indices),
            ("src_block_indices", src_block_indices),
        ):
            if indices is not None:
                check_isinstance(name, indices, [list, tuple], int)
                check_list_uint64(name, indices)
        if dst_block_memory_size is not None:
            check_uint64("dst_block_memory_size", dst_block_memory_size)
        src_idx = list(src_block_indices or [])
        dst_idx = list(dst_block_indices or [])
        if src_idx:
            raise_if_false(dst_idx, "transfer from blocks to cache is not supported")
            raise_if_false(
                len(src_idx) == len(dst_idx),
                f"num_block_indices mismatches, src_num = {len(src_idx)}, dst_num = {len(dst_idx)}",
            )
        elif dst_idx:
            raise_if_false(
                dst_block_memory_size is not None,
                "dst_block_memory_size must be set when transfer from cache to blocks",
            )
        check_isinstance("layer_synchronizer", layer_synchronizer, LayerSynchronizer, allow_none=False)
        if self._ep.remote_accessible:
            check_isinstance(
                "transfer_configs",
                transfer_configs,
                [list, tuple],
                TransferWithCacheKeyConfig,
                "While enable_remote_cache_accessible is True, ",
                allow_none=False,
            )
        else:
            check_isinstance(
                "transfer_configs", transfer_configs, [list, tuple], TransferConfig, allow_none=False
            )
        if not dst_idx and dst_block_memory_size not in (None, 0):
            raise_param_invalid(
                f"dst_block_memory_size ({dst_block_memory_size}) is neither None nor 0 "
                "while dst is not blocks"
            )
        if desc.num_tensors % 2:
            raise_param_invalid(f"cache_desc.num_tensors ({desc.num_tensors}) is not even")
        num_layers = desc.num_tensors // 2
        for config in transfer_configs:
            if config.src_layer_range is None:
                config.src_layer_range = range(0, num_layers)
            self._check_async_config(config, src_idx, num_layers, desc.batch_size)
        self._native("transfer_cache_async", f"src_cache = {src_cache}")
        entry = self._entry(src_cache, "src_cache")
        job = LayerJob(
            self, entry, layer_synchronizer, transfer_configs, src_idx, dst_idx, dst_block_memory_size or 0
        )
        thread = threading.Thread(target=job.run, name="kvtest-sim-transfer-cache-async", daemon=True)
        thread.start()
        return CacheTask(thread, job.results)

    @staticmethod
    def _check_async_config(
        config: TransferWithCacheKeyConfig | TransferConfig, src_idx: list[int], num_layers: int, batch: int
    ) -> None:
        """``TransferCacheJob.check_transfer_config``."""
        if src_idx and config.src_batch_index != 0:
            raise_param_invalid(
                f"Invalid TransferConfig, src_batch_index ({config.src_batch_index}) != 0 while src is blocks"
            )
        layers = config.src_layer_range
        assert layers is not None
        if not 0 <= layers.start < layers.stop <= num_layers:
            raise_param_invalid(f"src_layer_range: {layers} out of range, src_layer_num = {num_layers}")
        if isinstance(config, TransferConfig) and len(config.dst_addrs) != len(layers) * 2:
            raise_param_invalid(
                f"expect {len(layers) * 2} dst_addrs, but len(dst_addrs) = {len(config.dst_addrs)}, "
                f"range = {layers}"
            )

    # -- local copies -------------------------------------------------------------------------
    @staticmethod
    def _local_cache(arg: str, cache: Any) -> Cache:
        check_type(arg, cache, Cache)
        if not cache._valid:
            raise_param_invalid(f"{arg} is not a valid cache.")
        return cache  # type: ignore[no-any-return]

    def swap_blocks(self, src_cache: Cache, dst_cache: Cache, src_to_dst: dict[int, int]) -> None:
        """Copy blocks between a HOST and a DEVICE blocks cache (swap-in or swap-out)."""
        self._begin("swap_blocks")
        # the Python layer's checks, in its order and words (hicann/hixl v2/cache_manager.py _verify_caches)
        check_isinstance("src", src_cache, Cache)
        check_isinstance("dst", dst_cache, Cache)
        raise_if_false(src_cache.is_blocks_cache, "param check failed, src cache should be blocks cache.")
        raise_if_false(dst_cache.is_blocks_cache, "param check failed, dst cache should be blocks cache.")
        check_isinstance("src_to_dst", src_to_dst, dict, int)
        sd, dd = src_cache.cache_desc, dst_cache.cache_desc
        src_block, dst_block = sd.size // sd.batch_size, dd.size // dd.batch_size
        raise_if_false(
            src_block == dst_block, f"src block size:{src_block} and dst block size:{dst_block} must be equal"
        )
        raise_if_false(
            sd.num_tensors == dd.num_tensors,
            f"src num_tensors:{sd.num_tensors} and dst num_tensors:{dd.num_tensors} must be equal",
        )
        for s, d in src_to_dst.items():
            raise_if_false(0 <= s < sd.batch_size, f"src_block_index:{s} must be in [0, {sd.batch_size})")
            raise_if_false(0 <= d < dd.batch_size, f"dst_block_index:{d} must be in [0, {dd.batch_size})")
        raise_if_false(
            (sd.placement, dd.placement)
            in ((Placement.HOST, Placement.DEVICE), (Placement.DEVICE, Placement.HOST)),
            f"swap src placement:{sd.placement} to dst placement:{dd.placement} is not support",
        )
        with self._engine("swap_blocks", "swap blocks failed"):
            self._swap_blocks(src_cache, dst_cache, src_to_dst)

    def _swap_blocks(self, src_cache: Cache, dst_cache: Cache, src_to_dst: dict[int, int]) -> None:
        src = self._local_cache("src_cache", src_cache)
        dst = self._local_cache("dst_cache", dst_cache)
        sd, dd = src.cache_desc, dst.cache_desc
        n = sd.slot_bytes
        ignore_dst = self._ep.faults.ignores_mapping("swap_blocks")
        spans = [(s * n, (s if ignore_dst else d) * n, n) for s, d in src_to_dst.items()]
        pairs = [(t, t) for t in range(sd.num_tensors)]
        moves = self.expand(
            "swap_blocks", pairs, src.tensor_addrs, dst.tensor_addrs, spans, dd.batch_size * n
        )
        for s_addr, d_addr, size in moves:
            ctypes.memmove(d_addr, s_addr, size)
        if src_to_dst and n and self._ep.faults.corrupts("swap_blocks"):
            cell = ctypes.c_uint8.from_address(dst.tensor_addrs[0] + next(iter(src_to_dst.values())) * n)
            cell.value ^= 0xFF

    @_spoils_when_refused(
        "copy_cache",
        lambda dst, src, dst_batch_index=0, src_batch_index=0, offset=0, *a, **k: (
            dst, _slot(dst, dst_batch_index)[1] + max(0, int(offset))
        ),
    )
    def copy_cache(
        self,
        dst: Cache,
        src: Cache,
        dst_batch_index: int = 0,
        src_batch_index: int = 0,
        offset: int = 0,
        size: int = -1,
        req_id: int | None = None,
    ) -> None:
        """Copy one batch slot (from ``offset``, ``size`` bytes or the rest) of every tensor, locally."""
        self._begin("copy_cache")
        if not self._ep.initialized:
            raise native_error("copy_cache", LLMStatusCode.LLM_FAILED, "llm datadist is not initialized")
        with self._lock:
            local_copy.copy_cache(self, dst, src, dst_batch_index, src_batch_index, offset, size, req_id)

    @_spoils_when_refused(
        "copy_blocks",
        lambda cache, copy_block_info, *a, **k: _first_block(
            cache, [b for v in dict(copy_block_info).values() for b in v][:1]
        ),
    )
    def copy_blocks(self, cache: Cache, copy_block_info: dict[int, list[int]]) -> None:
        """Inside one blocks cache, copy block ``src`` to every block of ``copy_block_info[src]``."""
        self._begin("copy_blocks")
        if not self._ep.initialized:
            raise native_error("copy_blocks", LLMStatusCode.LLM_FAILED, "llm datadist is not initialized")
        with self._lock:
            local_copy.copy_blocks(self, cache, copy_block_info)


def _check_tensor_num_per_layer(api: str, tensor_num_per_layer: Any, cache: Cache) -> None:
    check_uint32("tensor_num_per_layer", tensor_num_per_layer)
    raise_if_false(
        tensor_num_per_layer > 0,
        f"[{api}] param check failed, tensor_num_per_layer ({tensor_num_per_layer}) is invalid, "
        f"should [1, {cache.cache_desc.num_tensors}]",
    )


def _check_one_range(name: str, layer_range: Any) -> None:
    """``check_layer_range`` of hicann/hixl v2/llm_types.py (None allowed)."""
    if layer_range is None:
        return
    check_isinstance(name, layer_range, range)
    raise_if_false(layer_range.step == 1, f"check {name}.step == 1 failed")
    raise_if_false(
        0 <= layer_range.start < layer_range.stop,
        f"check 0 <= range.start < range.stop failed, {name} = {layer_range}",
    )


def _push_layer_ranges(
    src_layer_range: Any, dst_layer_range: Any, src_cache: Cache, tensor_num_per_layer: int
) -> tuple[range, range]:
    """The push APIs' layer checks and defaults (every layer of the source cache)."""
    _check_one_range("src_layer_range", src_layer_range)
    _check_one_range("dst_layer_range", dst_layer_range)
    layers = range(0, src_cache.cache_desc.num_tensors // tensor_num_per_layer)
    src = layers if src_layer_range is None else src_layer_range
    dst = layers if dst_layer_range is None else dst_layer_range
    raise_if_false(
        len(src) == len(dst), "src_layer_range size should be equal to size of dst_layer_range size."
    )
    return src, dst


def check_layer_ranges(src_layer_range: Any, dst_layer_range: Any) -> None:
    """``layer_range_to_tensor_indices``'s checks (hicann/hixl v2/llm_utils.py), for the pulls."""
    check_isinstance("src_layer_range", src_layer_range, range)
    check_isinstance("dst_layer_range", dst_layer_range, range)
    raise_if_true(
        src_layer_range is not None and src_layer_range.step != 1,
        "param check failed, src_layer_range step must be 1.",
    )
    raise_if_true(
        dst_layer_range is not None and dst_layer_range.step != 1,
        "param check failed, dst_layer_range step must be 1.",
    )
    for name, layers in (("src_layer_range", src_layer_range), ("dst_layer_range", dst_layer_range)):
        if layers is None or len(layers) == 0:
            continue
        raise_if_true(layers[0] < 0, f"{name} is invalid, the start value:{layers[0]} is < 0")
        check_uint32(name, layers[0])
        check_uint32(name, layers[-1])
