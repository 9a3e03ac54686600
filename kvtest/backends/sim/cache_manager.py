"""``CacheManager`` (reached through ``LLMDataDist.cache_manager``): caches, keys and transfers.

Control records (under the namespace, see :mod:`control`):
``cache/<cluster>/<cache_id>`` the layout of an exported cache, ``key/<cluster>/<req>/<model>/<prefix>``
a CacheKey's batch slot, ``bkey/<cluster>/<model>`` a BlocksCacheKey's cache id.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import threading
import time
from collections.abc import Callable, Sequence
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
    Placement,
)
from kvtest.backends.sim.checks import INT64_MAX, UINT64_MAX, check_int, check_type
from kvtest.backends.sim.faults import OVERRUN_BYTES, SPILL_KINDS, spill
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
from kvtest.backends.sim.status import LLMException, LLMStatusCode, native_error, raise_param_invalid
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


def _throttle(factor: float, took: float) -> None:
    """The ``slow`` fault: stretch a transfer that took ``took`` seconds to ``factor`` times as long.

    It never turns into a timeout (that is the ``stall`` fault): the call is slower, nothing else.
    """
    time.sleep((factor - 1) * took)


_Call = TypeVar("_Call", bound=Callable[..., None])


def _slowed(api: str) -> Callable[[_Call], _Call]:
    """Apply the ``slow`` fault to a whole synchronous transfer call, so the GB/s a caller measures
    around it drops by the fault's factor (lookups and the NIXL move alike take longer)."""

    def wrap(method: _Call) -> _Call:
        @functools.wraps(method)
        def call(self: CacheManager, *args: Any, **kwargs: Any) -> None:
            factor = self._ep.fault_factor("slow", api)
            began = time.monotonic()
            method(self, *args, **kwargs)
            if factor is not None:
                _throttle(factor, time.monotonic() - began)

        return cast(_Call, call)

    return wrap


def _spoils_when_refused(api: str, target: Callable[..., tuple[Any, int]]) -> Callable[[_Call], _Call]:
    """The ``refused`` fault: a call that is refused still inverts ``OVERRUN_BYTES`` bytes of its
    destination's first tensor, at the byte offset ``target(*args, **kwargs)`` gives with the cache."""

    def wrap(method: _Call) -> _Call:
        @functools.wraps(method)
        def call(self: CacheManager, *args: Any, **kwargs: Any) -> None:
            try:
                method(self, *args, **kwargs)
            except LLMException:
                if self._ep.fault_active("refused", api):
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

    # -- common -------------------------------------------------------------------------------
    def _begin(self, api: str) -> float:
        if not self._ep.initialized:
            raise RuntimeError("llm datadist is not initialized")
        self._ep.fault_point(api)
        return time.monotonic() + self._ep.sync_timeout_ms / 1000

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

    def _close(self) -> None:
        with self._lock:
            for entry in list(self._entries.values()):
                self._release_records(entry)
                self._drop_keys(entry)
                entry.cache._invalidate()
            self._entries.clear()

    # -- pool caches --------------------------------------------------------------------------
    def _allocate(self, api: str, cache_desc: CacheDesc, blocks: bool) -> _Entry:
        check_type("cache_desc", cache_desc, CacheDesc)
        pool = self._ep.pools.get(cache_desc.placement.name)
        if pool is None:
            option = "mem_pool_cfg" if cache_desc.placement == Placement.DEVICE else "host_mem_pool_cfg"
            raise_param_invalid(f"you should config memory pool firstly, {option} is not set.")
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
        cache = Cache(next(self._ids), cache_desc, addrs, blocks)
        entry = _Entry(cache, exported=True, pool=pool, addrs=addrs)
        self._entries[cache.cache_id] = entry
        self._publish_cache(entry)
        return entry

    def _bind_keys(self, api: str, entry: _Entry, cache_keys: Any) -> None:
        check_type("cache_keys", cache_keys, list, tuple)
        for key in cache_keys:
            check_type("cache_keys item", key, CacheKey)
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
        with self._lock:
            self._sweep()
            check_type("cache_keys", cache_keys, list, tuple)
            entry = self._allocate("allocate_cache", cache_desc, blocks=False)
            self._bind_keys("allocate_cache", entry, cache_keys)
            return entry.cache

    def allocate_blocks_cache(
        self, cache_desc: CacheDesc, blocks_cache_key: BlocksCacheKey | None = None
    ) -> Cache:
        """A blocks cache from the memory pool, optionally published under ``blocks_cache_key``."""
        self._begin("allocate_blocks_cache")
        with self._lock:
            self._sweep()
            if blocks_cache_key is not None:
                check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey)
            entry = self._allocate("allocate_blocks_cache", cache_desc, blocks=True)
            if blocks_cache_key is not None:
                self._bind_blocks_key("allocate_blocks_cache", entry, blocks_cache_key)
            return entry.cache

    def _deallocate(self, api: str, cache: Cache, blocks: bool) -> None:
        self._begin(api)
        with self._lock:
            entry = self._entry(cache)
            if entry.pool is None:
                raise_param_invalid(f"{api} only supports caches from allocate, use unregister_cache.")
            if entry.cache.is_blocks_cache != blocks:
                raise_param_invalid(f"{api} does not support this cache type (is_blocks={not blocks}).")
            self._release_records(entry)
            entry.exported = False
            entry.deallocated = True
            entry.cache._invalidate()
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
        check_type("cache_key", cache_key, CacheKey)
        with self._lock:
            plane, _ = self._ep.ctx()
            path = plane.key(*_key_path(self._ep.cluster_id, cache_key))
            record = plane.fetch(path)
            entry = self._entries.get(int(record["cache_id"])) if record is not None else None
            if record is not None and (entry is None or entry.pool is not None):
                plane.release(path, record)
            self._sweep()

    # -- registered caches --------------------------------------------------------------------
    def _register(
        self, api: str, cache_desc: Any, addrs: Any, remote_accessible: Any, blocks: bool
    ) -> _Entry:
        check_type("cache_desc", cache_desc, CacheDesc)
        check_type("addrs", addrs, list, tuple)
        for addr in addrs:
            check_int("addrs item", addr, 0, UINT64_MAX)
        if remote_accessible is not None:
            check_type("remote_accessible", remote_accessible, bool)
        if len(addrs) != cache_desc.num_tensors:
            raise_param_invalid("addrs length should be equal to num_tensors.")
        if any(a == 0 for a in addrs):
            raise_param_invalid("addrs should not contain 0.")
        if remote_accessible and self._ep.linked:
            raise_param_invalid("you can not register remote accessible cache after link.")
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
        cache = Cache(next(self._ids), cache_desc, [int(a) for a in addrs], blocks)
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
        with self._lock:
            check_type("cache_keys", cache_keys, list, tuple)
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
        with self._lock:
            if blocks_cache_key is not None:
                check_type("blocks_cache_key", blocks_cache_key, BlocksCacheKey)
            entry = self._register("register_blocks_cache", cache_desc, addrs, remote_accessible, blocks=True)
            if blocks_cache_key is not None:
                self._bind_blocks_key("register_blocks_cache", entry, blocks_cache_key)
            return entry.cache

    def unregister_cache(self, cache_id: int) -> None:
        """Forget a registered cache; peers can no longer reach it."""
        self._begin("unregister_cache")
        check_int("cache_id", cache_id, -(2**63), INT64_MAX)
        with self._lock:
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
            entry.cache._invalidate()
            del self._entries[cache_id]

    # -- remote lookups -----------------------------------------------------------------------
    def _peer(self, api: str, cluster_id: int) -> str:
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
            transport.load_peer(agent["agent"], decode_bytes(agent["meta"]), int(agent["version"]))
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is a failed call, not a crash
            raise native_error(
                api, LLMStatusCode.LLM_FAILED, f"cannot reach cluster {cluster_id}: {type(exc).__name__}"
            ) from None
        return str(agent["agent"])

    def _remote_cache(self, api: str, agent: str, cluster_id: int, cache_id: int) -> _Remote:
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
        agent = self._peer(api, key.cluster_id)
        plane, _ = self._ep.ctx()
        if isinstance(key, CacheKeyByIdAndIndex):
            remote = self._remote_cache(api, agent, key.cluster_id, key.cache_id)
            check_in_range("batch_index of cache_key", [key.batch_index], remote.batch)
            return remote, key.batch_index, None
        if (key.req_id == UINT64_MAX) == (key.prefix_id == UINT64_MAX):
            raise_param_invalid("one and only one of req_id and prefix_id should be valid in cache_key.")
        path = plane.key(*_key_path(key.cluster_id, key))
        record = plane.fetch(path)
        if record is None:
            raise native_error(api, LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, f"{key} does not exist")
        remote = self._remote_cache(api, agent, key.cluster_id, int(record["cache_id"]))
        return remote, int(record["batch_index"]), (path, record)

    def _remote_blocks(self, api: str, key: BlocksCacheKey) -> _Remote:
        agent = self._peer(api, key.cluster_id)
        plane, _ = self._ep.ctx()
        record = plane.fetch(plane.key("bkey", key.cluster_id, key.model_id))
        if record is None:
            raise native_error(api, LLMStatusCode.LLM_KV_CACHE_NOT_EXIST, f"{key} does not exist")
        return self._remote_cache(api, agent, key.cluster_id, int(record["cache_id"]))

    def _move(
        self, api: str, op: str, agent: str, segments: list[tuple[int, int, int]], deadline: float
    ) -> None:
        """Run one NIXL transfer of (local, remote, bytes) segments, failing like the native call."""
        _, transport = self._ep.ctx()
        # a synchronous call is stretched as a whole (_slowed); an async layer's move is its transfer
        slow = self._ep.fault_factor("slow", api) if api == "transfer_cache_async" else None
        try:
            began = time.monotonic()
            transport.transfer(
                op,
                agent,
                segments,
                deadline,
                flip=self._ep.fault_active("flip", api),
                stall=self._ep.fault_active("stall", api),
            )
            if slow is not None:
                _throttle(slow, time.monotonic() - began)
            if self._ep.fault_active("source", api):
                self._spoil_source(op, agent, segments, deadline)
        except TransferError as exc:
            if exc.code == LLMStatusCode.LLM_TIMEOUT:
                details = f"{exc.details}: sync_kv_timeout is {self._ep.sync_timeout_ms} ms"
            else:
                details = exc.details
            raise native_error(api, exc.code, details) from None

    def _spoil(self, cache: Any, offset: int) -> None:
        """Invert ``OVERRUN_BYTES`` bytes of ``cache``'s first tensor from ``offset`` (a ``refused``
        fault), where that lies inside a tensor this process still has."""
        entry = self._entries.get(getattr(cache, "cache_id", -1))
        if entry is None or not entry.cache.tensor_addrs:
            return
        desc = entry.cache.cache_desc
        k = min(OVERRUN_BYTES, desc.batch_size * desc.slot_bytes - offset)
        if offset < 0 or k <= 0:
            return
        for i in range(k):
            cell = ctypes.c_uint8.from_address(entry.cache.tensor_addrs[0] + offset + i)
            cell.value ^= 0xFF

    def _spoil_source(
        self, op: str, agent: str, segments: list[tuple[int, int, int]], deadline: float
    ) -> None:
        """The ``source`` fault: after the move, 16 bytes of the first segment's source take the 16
        that follow them (a pull writes back into the peer's cache, a push into its own)."""
        _, transport = self._ep.ctx()
        k = OVERRUN_BYTES
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

    # -- fault hooks (see kvtest.backends.sim.faults) -------------------------------------------
    def _dst_layers(self, api: str, dst_layer_range: range | None) -> range | None:
        """``dst_layer_range``, or under a ``dstlayers`` fault the same number of layers from layer 0."""
        if isinstance(dst_layer_range, range) and self._ep.fault_active("dstlayers", api):
            return range(0, len(dst_layer_range))
        return dst_layer_range

    def _batch(self, api: str, index: int) -> int:
        """A batch index argument, or 0 under a ``batch`` fault."""
        return 0 if self._ep.fault_active("batch", api) else index

    def _expand(
        self,
        api: str,
        pairs: list[tuple[int, int]],
        src_addrs: Sequence[int],
        dst_addrs: Sequence[int],
        spans: list[Span],
        dst_bytes: int | None,
    ) -> list[tuple[int, int, int]]:
        """:func:`expand`, after any semantic fault rewrote the pairs and spans; a spill fault adds
        moves onto bytes the right ones do not write."""
        pairs, spans = self._ep.distort(api, pairs, spans, dst_bytes)
        moves = expand(pairs, src_addrs, dst_addrs, spans)
        for kind in SPILL_KINDS:
            if self._ep.fault_active(kind, api):
                extra_pairs, extra_spans = spill(kind, pairs, spans, dst_bytes, len(dst_addrs))
                moves += expand(extra_pairs, src_addrs, dst_addrs, extra_spans)
        return moves

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
        *,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Pull the remote batch slot ``cache_key`` names into ``cache[batch_index]`` (READ)."""
        deadline = self._begin("pull_cache")
        if self._ep.remote_accessible:  # a TypeError, as check_isinstance raises it (v2/cache_manager.py)
            check_type("cache_key", cache_key, CacheKeyByIdAndIndex)
        check_type("cache_key", cache_key, CacheKey, CacheKeyByIdAndIndex)
        check_int("batch_index", batch_index, 0, UINT64_MAX)
        check_int("size", size, -1, INT64_MAX)
        if size == 0:
            raise_param_invalid("size should be -1 or bigger than 0.")
        entry = self._entry(cache)
        desc = entry.cache.cache_desc
        if entry.cache.is_blocks_cache:
            raise_param_invalid("pull_cache does not support blocks cache, please use pull_blocks.")
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
        moves = self._expand("pull_cache", pairs, remote.addrs, entry.cache.tensor_addrs, spans, dst_bytes)
        self._move("pull_cache", "READ", remote.agent, [(d, s, n) for s, d, n in moves], deadline)
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
        *,
        src_layer_range: range | None = None,
        dst_layer_range: range | None = None,
        tensor_num_per_layer: int = 2,
    ) -> None:
        """Pull remote blocks (BlocksCacheKey) or a remote batch slot (cache keys) into local blocks."""
        deadline = self._begin("pull_blocks")
        check_type("src_cache_key", src_cache_key, CacheKey, CacheKeyByIdAndIndex, BlocksCacheKey)
        src = block_list("src_blocks", src_blocks)
        dst = block_list("dst_blocks", dst_blocks)
        entry = self._entry(dst_cache, "dst_cache")
        desc = entry.cache.cache_desc
        if not entry.cache.is_blocks_cache:
            raise_param_invalid("dst_cache should be blocks cache.")
        if not dst:
            raise_param_invalid("dst_blocks can not be empty.")
        check_in_range("dst_blocks", dst, desc.batch_size)
        claim = None
        spans: list[Span]
        if isinstance(src_cache_key, BlocksCacheKey):
            if not src:
                raise_param_invalid(
                    "src_blocks can not be empty when src_cache_key is instance of BlocksCacheKey."
                )
            if len(src) != len(dst):
                raise_param_invalid("src_blocks and dst_blocks should have the same length.")
            remote = self._remote_blocks("pull_blocks", src_cache_key)
            self._check_placements("pull_blocks", entry, remote)
            check_in_range("src_blocks", src, remote.batch)
            self._same_block(desc.slot_bytes, remote.slot_bytes, "block")
            spans = block_spans(src, dst, desc.slot_bytes)
        else:
            if src:
                raise_param_invalid(
                    "src_blocks should be empty when src_cache_key is not instance of BlocksCacheKey."
                )
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
        moves = self._expand("pull_blocks", pairs, remote.addrs, entry.cache.tensor_addrs, spans, dst_bytes)
        self._move("pull_blocks", "READ", remote.agent, [(d, s, n) for s, d, n in moves], deadline)
        self._consume(claim, None if src_layer_range is None else {s for s, _ in pairs})

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
        self._require_remote_mode("push_cache")
        check_type("dst_cache_key", dst_cache_key, CacheKeyByIdAndIndex)
        check_int("src_batch_index", src_batch_index, 0, UINT64_MAX)
        check_int("size", size, -1, INT64_MAX)
        if size != -1:
            raise_param_invalid("size only support -1 in push_cache.")
        entry = self._entry(src_cache, "src_cache")
        desc = entry.cache.cache_desc
        if entry.cache.is_blocks_cache:
            raise_param_invalid("src_cache should not be blocks cache, please use push_blocks.")
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
        moves = self._expand("push_cache", pairs, entry.cache.tensor_addrs, remote.addrs, spans, dst_bytes)
        self._move("push_cache", "WRITE", remote.agent, moves, deadline)

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
        self._require_remote_mode("push_blocks")
        check_type("dst_cache_key", dst_cache_key, BlocksCacheKey)
        src = block_list("src_blocks", src_blocks)
        dst = block_list("dst_blocks", dst_blocks)
        entry = self._entry(src_cache, "src_cache")
        desc = entry.cache.cache_desc
        if not entry.cache.is_blocks_cache:
            raise_param_invalid("src_cache should be blocks cache.")
        if not dst:
            raise_param_invalid("dst_blocks can not be empty.")
        if len(src) != len(dst):
            raise_param_invalid("src_blocks and dst_blocks should have the same length.")
        check_in_range("src_blocks", src, desc.batch_size)
        remote = self._remote_blocks("push_blocks", dst_cache_key)
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
        moves = self._expand("push_blocks", pairs, entry.cache.tensor_addrs, remote.addrs, spans, dst_bytes)
        self._move("push_blocks", "WRITE", remote.agent, moves, deadline)

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
        entry = self._entry(src_cache, "src_cache")
        desc = entry.cache.cache_desc
        if desc.placement == Placement.HOST:
            raise_param_invalid("src cache not support placement HOST")
        src_idx = [] if src_block_indices is None else block_list("src_block_indices", src_block_indices)
        dst_idx = [] if dst_block_indices is None else block_list("dst_block_indices", dst_block_indices)
        if dst_block_memory_size is not None:
            check_int("dst_block_memory_size", dst_block_memory_size, 0, UINT64_MAX)
        if src_idx:
            if not dst_idx:
                raise_param_invalid("transfer from blocks to cache is not supported")
            if len(src_idx) != len(dst_idx):
                raise_param_invalid(
                    f"num_block_indices mismatches, src_num = {len(src_idx)}, dst_num = {len(dst_idx)}"
                )
        elif dst_idx and dst_block_memory_size is None:
            raise_param_invalid("dst_block_memory_size must be set when transfer from cache to blocks")
        check_type("layer_synchronizer", layer_synchronizer, LayerSynchronizer)
        check_type("transfer_configs", transfer_configs, list, tuple)
        wanted = TransferWithCacheKeyConfig if self._ep.remote_accessible else TransferConfig
        for config in transfer_configs:
            check_type("transfer_configs item", config, wanted)
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
        src = self._local_cache("src_cache", src_cache)
        dst = self._local_cache("dst_cache", dst_cache)
        check_type("src_to_dst", src_to_dst, dict)
        for s, d in src_to_dst.items():
            check_int("src_to_dst key", s, 0, INT64_MAX)
            check_int("src_to_dst value", d, 0, INT64_MAX)
        sd, dd = src.cache_desc, dst.cache_desc
        if not (src.is_blocks_cache and dst.is_blocks_cache):
            raise_param_invalid("swap_blocks only support blocks cache.")
        if sd.num_tensors != dd.num_tensors or sd.slot_bytes != dd.slot_bytes:
            raise_param_invalid("src_cache and dst_cache should have the same num_tensors and block size.")
        if {sd.placement, dd.placement} != {Placement.HOST, Placement.DEVICE}:
            raise_param_invalid(
                "swap_blocks only support swap in (HOST to DEVICE) and swap out (DEVICE to HOST)."
            )
        check_in_range("src block", list(src_to_dst), sd.batch_size)
        check_in_range("dst block", list(src_to_dst.values()), dd.batch_size)
        n = sd.slot_bytes
        ignore_dst = self._ep.fault_active("mapping", "swap_blocks")
        spans = [(s * n, (s if ignore_dst else d) * n, n) for s, d in src_to_dst.items()]
        pairs = [(t, t) for t in range(sd.num_tensors)]
        moves = self._expand(
            "swap_blocks", pairs, src.tensor_addrs, dst.tensor_addrs, spans, dd.batch_size * n
        )
        for s_addr, d_addr, size in moves:
            ctypes.memmove(d_addr, s_addr, size)
        if src_to_dst and n and self._ep.fault_active("flip", "swap_blocks"):
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
        with self._lock:
            local_copy.copy_blocks(self, cache, copy_block_info)
